"""/healthz: 200 when the database and the cache answer, 503 naming the one that does not."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.db import connection
from django.db.utils import OperationalError

from iama_vetting import health

pytestmark = pytest.mark.django_db


class BrokenCache(LocMemCache):
    """A cache server that is down: every call fails."""

    def set(self, *args, **kwargs):
        raise ConnectionError("connection refused by 10.0.0.9:6379 (password=hunter2)")


class ForgetfulCache(LocMemCache):
    """A cache server that takes every write and keeps nothing (full, or a dummy)."""

    def get(self, key, default=None, version=None):
        return default


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


def test_a_cache_that_keeps_nothing_answers_503_naming_the_cache(client, settings):
    settings.CACHES = {"default": {"BACKEND": "tests.deploy.test_health.ForgetfulCache"}}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "cache": "error"}


@pytest.mark.postgres
def test_probes_give_their_pooled_database_connection_back(client):
    # A connection kept by each probe's thread would empty the pool after a few: the site's too.
    for _ in range(connection.pool.max_size + 1):
        assert client.get("/healthz").json() == {"database": "ok", "cache": "ok"}


def test_database_down_answers_503_naming_the_database(client, monkeypatch):
    def refuse():
        raise OperationalError("could not connect to server at db.internal")

    monkeypatch.setitem(health.CHECKS, "database", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "error", "cache": "ok"}
    assert b"db.internal" not in response.content


@pytest.mark.parametrize(("part", "other"), [("cache", "database"), ("database", "cache")])
def test_a_hanging_check_is_reported_as_an_error_without_waiting_for_it(client, monkeypatch, part, other):
    released, finished = threading.Event(), threading.Event()

    def hang() -> None:
        released.wait(timeout=20)  # a server that accepted the connection and went silent
        finished.set()

    monkeypatch.setitem(health.CHECKS, part, hang)
    try:
        response = client.get("/healthz")
        # The answer came while the check still hung (health.TIMEOUT bounds it, 2 s today).
        assert not finished.is_set()
    finally:
        released.set()
    assert response.status_code == 503
    # The other part is checked alongside, not behind the hanging one.
    assert response.json() == {part: "error", other: "ok"}


def test_a_part_answering_after_the_deadline_is_an_error_though_the_other_took_most_of_it(monkeypatch):
    # One deadline for both checks: the cache's answer at 1.3 s comes after it, however long
    # the database took. A second wait of the whole timeout would take it as ok.
    monkeypatch.setitem(health.CHECKS, "database", lambda: time.sleep(0.5))
    monkeypatch.setitem(health.CHECKS, "cache", lambda: time.sleep(1.3))
    assert health.run_checks(timeout=1.0) == {"database": "ok", "cache": "error"}


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
