"""Browser-test helpers: axe-core from npm, screenshots under tests/artifacts/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
ARTIFACTS = TESTS / "artifacts"
# Pinned; installed into a git-ignored directory, never committed.
AXE_VERSION = "4.11.0"
AXE_PREFIX = TESTS / ".axe"
AXE_SCRIPT = AXE_PREFIX / "node_modules" / "axe-core" / "axe.min.js"


def _installed_axe_version() -> str | None:
    package = AXE_PREFIX / "node_modules" / "axe-core" / "package.json"
    if not package.exists():
        return None
    import json

    return json.loads(package.read_text())["version"]


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """axe-core's browser bundle, installed from npm on first use."""
    if _installed_axe_version() != AXE_VERSION:
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("needs npm to install axe-core (apt-get install npm)")
        AXE_PREFIX.mkdir(exist_ok=True)
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(AXE_PREFIX),
                "--no-save",
                "--no-audit",
                "--no-fund",
                f"axe-core@{AXE_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0 or not AXE_SCRIPT.exists():
            pytest.skip(f"needs axe-core {AXE_VERSION} from npm; npm install failed: {result.stderr[-500:]}")
    return AXE_SCRIPT


@pytest.fixture
def check_accessibility(axe_script):
    """Run axe-core on the page; fail on any serious or critical violation."""

    def check(page, label: str) -> None:
        page.add_script_tag(path=str(axe_script))
        results = page.evaluate("async () => await axe.run(document)")
        bad = [
            f"{violation['id']} ({violation['impact']}): {violation['help']} at "
            + ", ".join(str(node["target"]) for node in violation["nodes"][:5])
            for violation in results["violations"]
            if violation["impact"] in ("serious", "critical")
        ]
        assert not bad, f"axe-core on {label}:\n" + "\n".join(bad)

    return check


@pytest.fixture
def screenshot():
    ARTIFACTS.mkdir(exist_ok=True)

    def take(page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
