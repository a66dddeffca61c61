"""`make audit`: pip-audit on the pinned requirements, honest about what it could not check.

pip-audit asks a vulnerability service about each pinned package. Where that
service cannot be reached, pip-audit skips the package and can still exit 0
with "No known vulnerabilities found" — so this script counts the skipped
packages and says plainly that they were NOT audited.

Exit codes: 0 every package audited and clean; 1 vulnerabilities found;
2 some or all packages could not be audited.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# Tried in order: PyPI's JSON API (pip-audit's default), then OSV.
SERVICES = ("pypi", "osv")


def audit(requirements: list[str], service: str) -> tuple[dict | None, str]:
    command = [str(BIN / "pip-audit"), "--no-deps", "--disable-pip", "--progress-spinner", "off"]
    command += ["--format", "json", "--vulnerability-service", service, "--timeout", "10"]
    for file in requirements:
        command += ["--requirement", file]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)  # noqa: S603
    try:
        return json.loads(result.stdout), result.stderr
    except json.JSONDecodeError:
        return None, result.stderr


def main(requirements: list[str]) -> int:
    for service in SERVICES:
        report, errors = audit(requirements, service)
        if report is None:
            print(f"pip-audit could not use the {service} vulnerability service:")
            print("  " + (errors.strip().splitlines() or ["no output"])[-1])
            continue
        dependencies = report["dependencies"]
        skipped = [dep for dep in dependencies if dep.get("skip_reason")]
        vulnerable = [dep for dep in dependencies if dep.get("vulns")]
        if len(skipped) == len(dependencies):
            print(f"The {service} vulnerability service could not be reached: no package was audited.")
            continue
        for dep in vulnerable:
            ids = ", ".join(vuln["id"] for vuln in dep["vulns"])
            print(f"VULNERABLE {dep['name']} {dep['version']}: {ids}")
        for dep in skipped:
            print(f"NOT AUDITED {dep['name']}: {dep['skip_reason']}")
        audited = len(dependencies) - len(skipped)
        print(
            f"Audited {audited} of {len(dependencies)} pinned packages against {service}: {len(vulnerable)} vulnerable."
        )
        if vulnerable:
            return 1
        return 2 if skipped else 0
    print(
        "NOT AUDITED: no vulnerability database (PyPI JSON API, OSV) is reachable from this machine. "
        "Nothing was checked; run `make audit` where one is."
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["requirements.txt"]))
