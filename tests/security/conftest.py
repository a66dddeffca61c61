"""Helpers for the security tests: a clean subprocess environment, real Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Production-like environment with known values, for subprocesses.
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SESSION_SECRET": "kP3vQ9xL2mW8nR5tY7uZ1aS4dF6gH0jK-production-like-secret",
    "ALLOWED_HOSTS": "rvi.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://rvi.example.org",
    "TRUSTED_PROXY_COUNT": "1",
}


def run_python(args: list[str], tmp_path: Path, **environment: str) -> subprocess.CompletedProcess:
    """Run Python in the project with only the given variables (plus PATH and private dirs)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "iama_vetting.settings",
        "EVIDENCE_ROOT": str(tmp_path / "evidence"),
        "STATIC_ROOT": str(tmp_path / "static"),
        **environment,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


@pytest.fixture
def redis_url():
    if not redis_reachable():
        pytest.skip(f"needs Redis on {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
def redis_key_prefix(redis_url):
    """A prefix no other test run uses; its keys are deleted afterwards (never FLUSHDB)."""
    import redis

    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own on a free port, which the test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def keys(self) -> list[bytes]:
        import redis

        return list(redis.Redis(port=self.port).scan_iter(count=500))


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (Debian package redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
