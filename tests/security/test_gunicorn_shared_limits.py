"""Two gunicorn workers share one Redis: a client is limited at the limit, not at twice it."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django_ratelimit.core import _get_window

from iama_vetting import ratelimits
from tests.security.conftest import PRODUCTION_ENV, PROJECT_DIR, free_port

pytestmark = pytest.mark.redis


def post_report(port: int) -> int:
    """POST a report whose body arrives after a pause.

    A sync worker blocks reading the body, so concurrent reports are spread over both workers
    however fast each one answers.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", "/csp-report/")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "2")
        connection.endheaders()
        time.sleep(0.05)
        connection.send(b"{}")
        return connection.getresponse().status
    finally:
        connection.close()


def wait_until_listening(port: int, process: subprocess.Popen) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited: " + process.stderr.read())
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/security.txt", timeout=5)  # noqa: S310
            return
        except OSError:  # refused, reset or timed out while the workers boot
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


def test_two_workers_count_against_one_shared_limit(redis_url, redis_key_prefix, tmp_path):
    port = free_port()
    environment = {
        **PRODUCTION_ENV,
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "TRUSTED_PROXY_COUNT": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "EVIDENCE_ROOT": str(tmp_path / "evidence"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "REDIS_URL": redis_url,
        "RATELIMIT_KEY_PREFIX": redis_key_prefix,
        "LOG_LEVEL": "ERROR",
    }
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "iama_vetting.wsgi",
            "--workers", "2", "--bind", f"127.0.0.1:{port}",
            # The worker's pid on each access line shows both workers answered.
            "--access-logfile", "-", "--access-logformat", "worker=%(p)s status=%(s)s path=%(U)s",
        ],
        cwd=PROJECT_DIR,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until_listening(port, process)
        limit = ratelimits.CSP_REPORT.per_minute
        # Start well inside this client's minute window, so the burst counts in one window.
        seconds_left = _get_window("127.0.0.1", 60) - time.time()
        if seconds_left < 10:
            time.sleep(seconds_left + 1)
        # Concurrent, so both workers are busy and each takes a share.
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _: post_report(port), range(limit + 20)))
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    workers = {
        line.split()[0]
        for line in output.splitlines()
        if line.startswith("worker=") and "path=/csp-report/" in line
    }
    assert len(workers) == 2, f"both workers must have answered, saw {workers}"
    # Counted once across workers: exactly `limit` got through (400: "{}" is no report), the rest 429.
    assert statuses.count(400) == limit
    assert statuses.count(429) == 20
