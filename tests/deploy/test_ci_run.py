"""`.ci/run` on a bare machine, with apt-get, psql and python3.11 replaced by stubs that record their calls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from django.conf import settings

STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\nexit {status}\n'


def stub(directory: Path, name: str, status: int) -> None:
    path = directory / name
    path.write_text(STUB.format(status=status))
    path.chmod(0o755)


def test_a_bare_machine_gets_make_and_venv_and_a_missing_postgresql_stops_the_run_at_once(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("basename", "dirname"):
        (bin_dir / name).symlink_to(shutil.which(name))
    stub(bin_dir, "apt-get", 0)
    # No PostgreSQL answering; a python3.11 without ensurepip (Debian's, before python3.11-venv).
    stub(bin_dir, "psql", 2)
    stub(bin_dir, "python3.11", 1)
    calls = tmp_path / "calls"
    # No make on the PATH: only the stubs and the two tools above.
    result = subprocess.run(
        ["/bin/bash", str(settings.BASE_DIR / ".ci" / "run")],
        env={"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "PostgreSQL does not answer as user postgres on 127.0.0.1:5432: start it, then run .ci/run again."
    ]
    made = calls.read_text().splitlines()
    assert "apt-get install -y -qq --no-install-recommends make" in made
    assert "apt-get install -y -qq --no-install-recommends python3.11-venv" in made
    # Stopped before anything slow (Synapse's install) or anything that needs the database.
    assert made[-1].startswith("psql -h 127.0.0.1 -U postgres")
