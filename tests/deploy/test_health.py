"""/healthz: 200 when the database and the cache answer, 503 naming the one that does not."""

from __future__ import annotations

import threading

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.db.utils import OperationalError

from iama_vetting import health

pytestmark = pytest.mark.django_db


class BrokenCache(LocMemCache):
    """A cache server that is down: every call fails."""

    def set(self, *args, **kwargs):
        raise ConnectionError("connection refused by 10.0.0.9:6379 (password=hunter2)")


def test_healthy_site_answers_200_with_only_the_two_states(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "cache": "ok"}
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]


def test_cache_down_answers_503_naming_the_cache_and_nothing_else(client, settings, caplog):
    settings.CACHES = {"default": {"BACKEND": "tests.deploy.test_health.BrokenCache"}}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "cache": "error"}
    assert b"10.0.0.9" not in response.content and b"hunter2" not in response.content
    # Each probe of a part that is down logs one line: the part and the error's kind, no traceback, no secret.
    [record] = [record for record in caplog.records if record.name == "iama_vetting.health"]
    assert record.getMessage() == "Health check: cache failed (ConnectionError)."
    assert record.exc_info is None


def test_database_down_answers_503_naming_the_database(client, monkeypatch):
    def refuse():
        raise OperationalError("could not connect to server at db.internal")

    monkeypatch.setitem(health.CHECKS, "database", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "error", "cache": "ok"}
    assert b"db.internal" not in response.content


def test_a_hanging_check_is_reported_as_an_error_without_waiting_for_it(client, monkeypatch):
    released, finished = threading.Event(), threading.Event()

    def hang() -> None:
        released.wait(timeout=20)  # a cache server that accepted the connection and went silent
        finished.set()

    monkeypatch.setitem(health.CHECKS, "cache", hang)
    try:
        response = client.get("/healthz")
        # The answer came while the check still hung (health.TIMEOUT bounds it, 2 s today).
        assert not finished.is_set()
    finally:
        released.set()
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "cache": "error"}


def test_healthz_answers_during_maintenance(client, settings, tmp_path):
    settings.MAINTENANCE_FILE = tmp_path / "maintenance.json"
    settings.MAINTENANCE_FILE.write_text('{"since": "2026-01-01T00:00:00+00:00", "until": null}')
    assert client.get("/healthz").status_code == 200


def test_head_answers_200_without_a_body_when_the_database_and_cache_answer(client):
    response = client.head("/healthz")
    assert response.status_code == 200
    assert response.content == b""
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]


@pytest.mark.parametrize("part", ["database", "cache"])
def test_head_answers_503_when_the_database_or_the_cache_is_down(client, monkeypatch, part):
    def refuse():
        raise OperationalError("could not connect to server at db.internal")

    monkeypatch.setitem(health.CHECKS, part, refuse)
    response = client.head("/healthz")
    assert response.status_code == 503
    assert response.content == b""


def test_healthz_refuses_post(client):
    assert client.post("/healthz").status_code == 405
