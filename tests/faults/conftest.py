"""A real app server for fault injection: gunicorn with 2 workers on the PostgreSQL test database."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

PROJECT_DIR = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory) -> Path:
    static_root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "STATIC_ROOT": str(static_root)},
        check=True,
        timeout=120,
    )
    return static_root


@contextlib.contextmanager
def app_server(
    settings, static_root: Path, evidence_root: Path, log_path: Path, **environment
) -> Iterator[str]:
    database = settings.DATABASES["default"]
    port = free_port()
    env = {
        **os.environ,
        "DEBUG": "false",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "ALLOWED_HOSTS": "127.0.0.1",
        "STATIC_ROOT": str(static_root),
        "EVIDENCE_ROOT": str(evidence_root),
        "STAFF_NOTIFY_EMAILS": "",
        # Fifty applicants from one address, on purpose.
        "RATELIMIT_ENABLE": "false",
        "SECURE_SSL_REDIRECT": "false",
        **environment,
    }
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                str(GUNICORN),
                "iama_vetting.wsgi",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "--no-control-socket",
                "--timeout",
                "30",
                "--graceful-timeout",
                "5",
            ],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so a master that will not stop is killed with its workers.
            start_new_session=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base_url}/apply/", timeout=10).status_code == 200:
                        break
                except requests.RequestException:
                    pass  # still booting
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield base_url
        finally:
            stop(server)


def stop(server: subprocess.Popen) -> None:
    """Stop gunicorn gracefully, or kill its whole process group: none may outlive the test."""
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


@dataclass(frozen=True)
class Server:
    base_url: str
    evidence_root: Path
    # Where uploads wait as temporary files (TemporaryFileUploadHandler): empty between requests.
    upload_temp_dir: Path
    log_path: Path


def upload_temp_dir(tmp_path: Path) -> Path:
    """A directory of the server's own for temporary uploads, given to it as TMPDIR.

    The settings have no FILE_UPLOAD_TEMP_DIR, so Django puts uploads in Python's
    tempfile directory, which TMPDIR sets: a leftover upload shows up here.
    """
    directory = tmp_path / "upload-tmp"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture
def gunicorn_on_postgres(transactional_db, settings, collected_static, tmp_path):
    evidence_root = tmp_path / "evidence"
    temp_dir = upload_temp_dir(tmp_path)
    log_path = tmp_path / "gunicorn.log"
    with app_server(settings, collected_static, evidence_root, log_path, TMPDIR=str(temp_dir)) as base_url:
        yield Server(base_url, evidence_root, temp_dir, log_path)


class Applicant:
    """One person filling the form over HTTP, CSRF token and all."""

    def __init__(self, base_url: str, number: int) -> None:
        self.base_url = base_url
        self.email = f"person{number}@applicant.example"
        self.session = requests.Session()
        self.form: requests.Response | None = None

    def post(self, files: dict[str, tuple[str, bytes]], consent: bool = True) -> requests.Response:
        self.open_form()
        return self.send(files, consent)

    def open_form(self) -> None:
        """GET the form: its CSRF token and cookie for `send`."""
        self.form = self.session.get(f"{self.base_url}/apply/", timeout=30)
        self.form.raise_for_status()

    def send(self, files: dict[str, tuple[str, bytes]], consent: bool = True) -> requests.Response:
        """POST the form opened with `open_form`."""
        form = self.form
        assert form is not None, "open_form first"
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        data = {
            "csrfmiddlewaretoken": token,
            "full_name": f"Person {self.email}",
            "email": self.email,
            "referral": "A friend",
            "statement": "I would like to join.",
        }
        if consent:
            data["consent"] = "on"
        return self.session.post(
            f"{self.base_url}/apply/",
            data=data,
            files={
                field: (name, content, "application/octet-stream") for field, (name, content) in files.items()
            },
            # The CSRF cookie is Secure (production settings); this plain-HTTP test sends it by hand.
            headers={"Cookie": f"csrftoken={form.cookies['csrftoken']}"},
            allow_redirects=False,
            timeout=60,
        )
