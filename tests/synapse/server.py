"""A real Synapse homeserver for the `synapse`-marked tests.

Synapse is installed from PyPI into its own virtualenv (never the project's
.venv: its dependencies would clash with ours), pinned with all its
dependencies in requirements.txt beside this file, and cached under
/var/tmp keyed by the pinned version and the file's hash, so it is installed
once per machine (about a minute, 250 MB). `.ci/run` installs it before the
suite (`python -m tests.synapse.server install`); the test fixture installs
it too when it is missing.

Each run starts one server (session-scoped fixture): SQLite, server_name
`localhost`, listening only on 127.0.0.1 on a free port, registration by
token only, no key servers. An admin is registered with
`register_new_matrix_user` and the shared secret; its access token comes
from the client login API.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SYNAPSE_VERSION = "1.163.2"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
VENV_ROOT = Path(os.environ.get("RVI_SYNAPSE_VENV_ROOT", "/var/tmp"))
SERVER_NAME = "localhost"
ADMIN_USER = "rvi-admin"
START_TIMEOUT = 90.0


class SynapseUnavailable(Exception):
    """Synapse could not be installed or started here; the message says why."""


def venv_path() -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return VENV_ROOT / f"rvi-synapse-{SYNAPSE_VERSION}-{digest}"


def install() -> Path:
    """Create the cached venv with the pinned Synapse unless it is there already."""
    venv = venv_path()
    marker = venv / ".installed"
    if marker.exists():
        return venv
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    # Two test runs at once (several worktrees) must not install into one venv together.
    with open(VENV_ROOT / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return venv
        python = getattr(sys, "_base_executable", sys.executable)
        steps = [
            [python, "-m", "venv", "--clear", str(venv)],
            [
                str(venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                # Wheels only: no compiler or Rust toolchain needed on the machine.
                "--only-binary=:all:",
                "-r",
                str(REQUIREMENTS),
            ],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SynapseUnavailable(
                    f"installing matrix-synapse {SYNAPSE_VERSION} failed: {result.stderr.strip()[-500:]}"
                )
        marker.write_text(SYNAPSE_VERSION)
    return venv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(workdir: Path, port: int, shared_secret: str) -> str:
    rate_unlimited = {"per_second": 1000, "burst_count": 1000}
    config = {
        "server_name": SERVER_NAME,
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "enable_registration": True,
        "registration_requires_token": True,
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "presence": {"enabled": False},
        # Test passwords need no real hashing cost.
        "bcrypt_rounds": 4,
        "url_preview_enabled": False,
        "enable_metrics": False,
        # The tests register and log in faster than any person.
        "rc_registration": rate_unlimited,
        "rc_login": {"address": rate_unlimited, "account": rate_unlimited, "failed_attempts": rate_unlimited},
        "rc_message": rate_unlimited,
    }
    # JSON is valid YAML, and the standard library writes it.
    return json.dumps(config, indent=2)


@dataclass
class Homeserver:
    url: str
    server_name: str
    admin_token: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    log: Path
    started_in: float

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def call(
    url: str, method: str = "GET", body: dict | None = None, token: str | None = None
) -> tuple[int, dict]:
    """A small client-server API call for the tests (and the fixture): (status, JSON)."""
    request = urllib.request.Request(  # noqa: S310 (127.0.0.1 only)
        url, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (127.0.0.1 only)
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def start(workdir: Path) -> Homeserver:
    started = time.monotonic()
    venv = install()
    python = str(venv / "bin" / "python")
    port = free_port()
    shared_secret = secrets.token_hex(16)
    config = workdir / "homeserver.yaml"
    config.write_text(_config(workdir, port, shared_secret))
    keys = subprocess.run(
        [python, "-m", "synapse.app.homeserver", "-c", str(config), "--generate-keys"],
        capture_output=True,
        text=True,
        check=False,
    )
    if keys.returncode != 0:
        raise SynapseUnavailable(f"Synapse could not generate its keys: {keys.stderr.strip()[-500:]}")
    log = workdir / "homeserver.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [python, "-m", "synapse.app.homeserver", "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process, log)
        admin_password = secrets.token_hex(12)
        registered = subprocess.run(
            [
                str(venv / "bin" / "register_new_matrix_user"),
                "-u",
                ADMIN_USER,
                "-p",
                admin_password,
                "--admin",
                "-k",
                shared_secret,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if registered.returncode != 0:
            raise SynapseUnavailable(
                f"registering the Synapse admin failed: {registered.stderr.strip()[-500:]}"
            )
        status, login = call(
            f"{url}/_matrix/client/v3/login",
            "POST",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": ADMIN_USER},
                "password": admin_password,
            },
        )
        if status != 200:
            raise SynapseUnavailable(f"the Synapse admin could not log in (HTTP {status})")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return Homeserver(
        url=url,
        server_name=SERVER_NAME,
        admin_token=login["access_token"],
        process=process,
        log=log,
        started_in=time.monotonic() - started,
    )


def _wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SynapseUnavailable(f"Synapse exited at start: {log.read_text()[-1000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise SynapseUnavailable(f"Synapse did not answer within {START_TIMEOUT:.0f} s")


if __name__ == "__main__":
    # `python -m tests.synapse.server install`: used by .ci/run before the suite.
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m tests.synapse.server install")
    began = time.monotonic()
    print(f"matrix-synapse {SYNAPSE_VERSION} in {install()} ({time.monotonic() - began:.0f} s)")
