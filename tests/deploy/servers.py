"""The app as production runs it, for tests and bench/downloads.py.

Each piece runs as its own process on 127.0.0.1 on a port chosen at run
time: gunicorn with the rendered gunicorn.conf.py, nginx with the rendered
site (inside a small wrapper nginx.conf with `daemon off;`), a moto S3
server. The app's database is a SQLite file of its own: the test's database
lives in an uncommitted transaction no other process could see.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

BASE_DIR = settings.BASE_DIR
PYTHON = sys.executable
VENV = Path(sys.prefix)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl")
STAFF_PASSWORD = "a-long-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a 127.0.0.1 URL built here
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered {url} within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class App:
    """One installation of the app below `root`: its env, database and files."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.evidence_root = root / "evidence"
        self.static_root = root / "static"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_", "CACHE_", "REDIS_", "EVIDENCE_", "AWS_"))
        }
        self.env.update(
            {
                "DEBUG": "false",
                "SESSION_SECRET": "deploy-test-secret-used-nowhere-else",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
                "EVIDENCE_ROOT": str(self.evidence_root),
                "STATIC_ROOT": str(self.static_root),
                "BACKUP_DIR": str(root / "backups"),
                "MAINTENANCE_FILE": str(root / "maintenance.json"),
                "STAFF_NOTIFY_EMAILS": "",
                **env,
            }
        )

    def manage(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 - our own manage.py
            [PYTHON, str(BASE_DIR / "manage.py"), *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def install(self) -> App:
        self.root.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--no-input", "--verbosity", "0")
        self.manage("collectstatic", "--no-input", "--verbosity", "0")
        return self

    def staff_session(self) -> str:
        """A signed-in vetting agent with the evidence permission: its session key."""
        return self.manage("shell", "-c", STAFF_SESSION_CODE).strip().splitlines()[-1]

    def shell_json(self, code: str):
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])

    def render_deploy(self, out: Path, **options: str | int) -> Path:
        args = [
            "deploy_config",
            "--domain",
            "localhost",
            "--app-dir",
            str(BASE_DIR),
            "--venv",
            str(VENV),
            "--user",
            "root",
            "--out",
            str(out),
            "--state-dir",
            str(self.root),
            "--evidence-root",
            str(self.evidence_root),
            "--static-root",
            str(self.static_root),
            "--env-file",
            str(self.root / "env"),
        ]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.manage(*args)
        return out

    @contextmanager
    def gunicorn(self, config: Path, port: int, workers: int = 2) -> Iterator[str]:
        log = (self.root / f"gunicorn-{port}.log").open("w")
        process = subprocess.Popen(  # noqa: S603 - the venv's gunicorn
            [
                str(VENV / "bin" / "gunicorn"),
                "--config",
                str(config),
                "--no-control-socket",
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "iama_vetting.wsgi",
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/healthz", process=process)
            yield url
        finally:
            stop(process)
            log.close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(  # noqa: S603 - openssl with fixed arguments
        [
            OPENSSL or "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def nginx_wrapper(site: Path, directory: Path, extra: str = "") -> Path:
    """A whole nginx.conf around the rendered site: temp files and pid in `directory`."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / name).mkdir(exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(
        f"""
daemon off;
# The test runs as root; its files are root's 0640, as the app writes them.
user root;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {site};
    {extra}
}}
"""
    )
    return config


def nginx_test(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - Debian's nginx
        [NGINX, "-t", "-c", str(config), "-e", str(config.parent / "error.log")],
        capture_output=True,
        text=True,
    )


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode} before listening on {port}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


@contextmanager
def nginx(config: Path, port: int) -> Iterator[None]:
    process = subprocess.Popen(  # noqa: S603 - Debian's nginx
        [NGINX, "-c", str(config), "-e", str(config.parent / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield
    finally:
        stop(process)


# Signed in with both steps, as STAFF_REQUIRE_2FA (on without DEBUG) requires for evidence.
STAFF_SESSION_CODE = f"""
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.backends.db import SessionStore
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
user, _ = User.objects.get_or_create(username="agent", defaults={{"is_staff": True}})
user.set_password("{STAFF_PASSWORD}")
user.save()
user.user_permissions.add(Permission.objects.get(codename="view_evidence"))
device, _ = TOTPDevice.objects.get_or_create(user=user, defaults={{"name": "phone", "confirmed": True}})
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session[DEVICE_ID_SESSION_KEY] = device.persistent_id
session.create()
print(session.session_key)
"""


def submit_application(base_url: str, files: dict[str, tuple[str, bytes]], **requests_options):
    """Apply through the public form as a browser would; returns the final response."""
    import requests  # Only the real-server tests and the benchmark need it.

    form = requests.get(f"{base_url}/apply/", timeout=30, **requests_options)
    form.raise_for_status()
    token = form.cookies["csrftoken"]
    marker = 'name="csrfmiddlewaretoken" value="'
    form_token = form.text.split(marker, 1)[1].split('"', 1)[0]
    data = {
        "csrfmiddlewaretoken": form_token,
        "full_name": "Ada Example",
        "email": "ada@example.org",
        "matrix_username": "ada",
        "referral": "Met the team at a meetup.",
        "statement": "I would like to join the community.",
        "consent": "on",
        "website": "",
    }
    upload = {f"evidence_{index}": item for index, item in enumerate(files.values(), start=1)}
    return requests.post(
        f"{base_url}/apply/",
        data=data,
        files=upload,
        cookies={"csrftoken": token},
        headers={"Referer": f"{base_url}/apply/"},
        allow_redirects=False,
        timeout=60,
        **requests_options,
    )


def pdf_bytes(size: int) -> bytes:
    """A file libmagic calls a PDF, padded to `size` bytes."""
    head = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n"
    tail = b"\n%%EOF\n"
    return head + b"%" + b"x" * (size - len(head) - len(tail) - 1) + tail
