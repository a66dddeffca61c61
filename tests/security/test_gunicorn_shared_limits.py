"""Two gunicorn workers share one Redis: a client is limited at the limit, not at twice it."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django_ratelimit.core import _get_window

from iama_vetting import ratelimits
from tests.security.conftest import PRODUCTION_ENV, PROJECT_DIR, free_port

pytestmark = pytest.mark.redis


def slow_request(port: int, method: str, path: str, body: bytes = b"") -> int:
    """Send a request whose end arrives after a pause; its status.

    A sync worker blocks reading the request, so concurrent requests are
    spread over both workers however fast each one answers.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path)
        if body:
            connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        time.sleep(0.05)
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def wait_until_listening(port: int, process: subprocess.Popen, errors: Path) -> None:
    """Probes /healthz, which counts in no limit: the tests' counts start at zero."""
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited: " + errors.read_text())
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)  # noqa: S310
            return
        except OSError:  # refused, reset or timed out while the workers boot
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


@contextlib.contextmanager
def two_workers(
    redis_url: str, redis_key_prefix: str, tmp_path: Path, **settings: str
) -> Iterator[list[str]]:
    """gunicorn with two sync workers sharing one Redis; yields its port, then its access lines."""
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
        **settings,
    }
    # Our 429 page links the stylesheet, which needs the collected files' manifest.
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "--verbosity", "0"],
        cwd=PROJECT_DIR, env=environment, check=True,
    )  # fmt: skip
    # Files, not pipes: nobody reads a pipe while the test runs, and a full one blocks gunicorn.
    access_log, errors = tmp_path / "gunicorn-access.log", tmp_path / "gunicorn-errors.log"
    with access_log.open("w") as access_out, errors.open("w") as errors_out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "iama_vetting.wsgi",
                "--workers", "2", "--bind", f"127.0.0.1:{port}",
                # The worker's pid on each access line shows both workers answered.
                "--access-logfile", "-", "--access-logformat", "worker=%(p)s status=%(s)s path=%(U)s",
            ],
            cwd=PROJECT_DIR,
            env=environment,
            stdout=access_out,
            stderr=errors_out,
        )  # fmt: skip
    access_lines: list[str] = []
    try:
        wait_until_listening(port, process, errors)
        wait_until_both_workers_answer(port, access_log)
        yield port, access_lines
    finally:
        process.terminate()
        process.wait(timeout=30)
        access_lines += [line for line in access_log.read_text().splitlines() if line.startswith("worker=")]


def workers_answering(access_lines: list[str], path: str) -> set[str]:
    return {line.split()[0] for line in access_lines if f"path={path}" in line}


def wait_until_both_workers_answer(port: int, access_log: Path) -> None:
    """Each worker loads the app on its own: on a busy machine the second may still be loading
    when the first answers. /healthz counts in no limit, so these requests change no count."""
    for _ in range(60):
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: slow_request(port, "GET", "/healthz"), range(4)))
        if len(workers_answering(access_log.read_text().splitlines(), "/healthz")) == 2:
            return
        time.sleep(0.5)
    raise RuntimeError("the second gunicorn worker never answered")


def start_well_inside_the_minute(window_end: float) -> None:
    """So that a burst counts in one window."""
    seconds_left = window_end - time.time()
    if seconds_left < 10:
        time.sleep(seconds_left + 1)


def test_two_workers_count_against_one_shared_limit(redis_url, redis_key_prefix, tmp_path):
    with two_workers(redis_url, redis_key_prefix, tmp_path) as (port, access_lines):
        limit = ratelimits.CSP_REPORT.per_minute
        start_well_inside_the_minute(_get_window("127.0.0.1", 60))
        # Concurrent, so both workers are busy and each takes a share.
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(
                pool.map(lambda _: slow_request(port, "POST", "/csp-report/", b"{}"), range(limit + 20))
            )
    workers = workers_answering(access_lines, "/csp-report/")
    assert len(workers) == 2, f"both workers must have answered, saw {workers}"
    # Counted once across workers: exactly `limit` got through (400: "{}" is no report), the rest 429.
    assert statuses.count(400) == limit
    assert statuses.count(429) == 20


@pytest.mark.parametrize("limit", [10, 120], ids=["a low limit, a batch of one", "the default limit"])
def test_two_workers_let_at_most_a_batch_past_the_default_tier(redis_url, redis_key_prefix, tmp_path, limit):
    """Exact in one worker; the other may let one batch through unseen before its counts tell it.
    Under 32 a batch is one request: each is sent after its response."""
    batch = ratelimits.default_tier_batch(limit)
    with two_workers(redis_url, redis_key_prefix, tmp_path, RATELIMIT_DEFAULT_PER_MINUTE=str(limit)) as (
        port,
        access_lines,
    ):
        start_well_inside_the_minute(time.time() - time.time() % 60 + 60)
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(
                pool.map(lambda _: slow_request(port, "GET", "/.well-known/security.txt"), range(limit + 20))
            )
    workers = workers_answering(access_lines, "/.well-known/security.txt")
    assert len(workers) == 2, f"both workers must have answered, saw {workers}"
    assert set(statuses) == {200, 429}
    assert limit <= statuses.count(200) <= limit + batch
