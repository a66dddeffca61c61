"""Rate limits when Redis goes away and comes back: per-process counting, never unlimited, never a 500."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from wsgiref.util import setup_testing_defaults

import pytest
import time_machine
from django.core.cache import caches
from django.core.handlers.wsgi import WSGIHandler

from iama_vetting import cache as fallback_module
from iama_vetting import ratelimits
from iama_vetting.cache import FallbackCache
from tests.security.conftest import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

REDIS_BACKEND = "django.core.cache.backends.redis.RedisCache"


def fallback_config(url: str, prefix: str = "rl") -> dict:
    return {
        "BACKEND": "iama_vetting.cache.FallbackCache",
        "OPTIONS": {
            "PRIMARY": {
                "BACKEND": REDIS_BACKEND,
                "LOCATION": url,
                "KEY_PREFIX": prefix,
                "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": None},
            }
        },
    }


class FakeMonotonic:
    """The fallback's own clock (retry delay, one error a minute), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch):
    clock = FakeMonotonic()
    monkeypatch.setattr(fallback_module.time, "monotonic", clock)
    return clock


@pytest.fixture(autouse=True)
def stopped_clock():
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False):
        yield


def cache_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "iama_vetting.cache" and r.levelno == logging.ERROR]


def test_limits_go_on_per_process_while_redis_is_down_and_shared_again_after(
    client, settings, own_redis, monotonic, caplog
):
    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    for _ in range(3):
        assert client.post("/apply/", {}).status_code == 200
    assert own_redis.keys(), "the counters live in Redis while it answers"

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="iama_vetting.cache"):
        # Counting restarts in this process's memory: five more, then refused. Never a 500.
        statuses = []
        for _ in range(8):
            statuses.append(client.post("/apply/", {}).status_code)
            monotonic.now += 6  # past the retry delay: every request tries Redis again
    assert statuses == [200] * 5 + [429] * 3
    assert len(cache_errors(caplog)) == 1, "one error a minute, not one per request"

    caplog.clear()
    monotonic.now += 61
    with caplog.at_level(logging.WARNING, logger="iama_vetting.cache"):
        client.post("/apply/", {}, REMOTE_ADDR="198.51.100.1")
    assert len(cache_errors(caplog)) == 1, "a minute later the outage is logged again"

    own_redis.start()
    monotonic.now += 6
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iama_vetting.cache"):
        assert client.post("/apply/", {}, REMOTE_ADDR="198.51.100.2").status_code == 200
    assert own_redis.keys(), "shared counting resumed in Redis"
    assert any("answers again" in record.getMessage() for record in caplog.records)


def test_an_unreachable_redis_never_raises_and_keeps_counting(monotonic, caplog):
    closed = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    cache = FallbackCache("", fallback_config(closed, prefix="closed"))
    with caplog.at_level(logging.ERROR, logger="iama_vetting.cache"):
        assert cache.add("counter", 1, 60) is True
    assert "127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text
    assert cache.add("counter", 1, 60) is False
    assert cache.incr("counter") == 2
    assert cache.get("counter") == 2


def test_while_redis_is_down_all_threads_of_a_process_count_in_the_same_memory(monotonic):
    # Django makes a cache object per thread: gunicorn's threads would otherwise each count alone.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    prefix = f"threads-{uuid.uuid4().hex}"
    first = FallbackCache("", fallback_config(closed, prefix=prefix))
    second = FallbackCache("", fallback_config(closed, prefix=prefix))
    first.add("counter", 0, 60)
    first.incr("counter")
    assert second.incr("counter") == 2


def test_while_redis_is_down_the_fallback_keeps_far_more_counters_than_djangos_default_300(monotonic):
    # Full, it forgets the oldest third: a client making new keys would push out its own sign-in counters.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    cache = FallbackCache("", fallback_config(closed, prefix=f"many-{uuid.uuid4().hex}"))
    for number in range(1000):
        cache.add(f"client-{number}", 1, 60)
    assert cache.get("client-0") == 1


def test_clearing_the_counters_leaves_every_other_key_in_the_redis_database(own_redis):
    import redis

    server = redis.Redis(port=own_redis.port)
    server.set(":1:a-key-of-the-default-cache", "kept")
    cache = FallbackCache("", fallback_config(own_redis.url, prefix="rl"))
    cache.add("counter", 0, 60)
    cache.clear()
    assert server.keys("*") == [b":1:a-key-of-the-default-cache"]


@pytest.fixture
def hanging_redis() -> Iterator[socket.socket]:
    """A listening socket that takes connections and never answers: a Redis that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener


def connections_made(listener: socket.socket) -> int:
    """How many connections clients have opened to the listener: accept them all, without waiting."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def test_a_hanging_redis_is_tried_once_per_retry_delay_not_once_per_call(hanging_redis, monotonic):
    # The fallback's clock stands still: every call below comes within RETRY_SECONDS of the first.
    url = f"redis://127.0.0.1:{hanging_redis.getsockname()[1]}/0"
    cache = FallbackCache("", fallback_config(url, prefix="hanging"))
    for _ in range(10):
        cache.add("counter", 0, 60)
        cache.incr("counter")
    # One try, which waited out its socket timeout; every later call was answered from memory.
    assert connections_made(hanging_redis) == 1
    assert cache.get("counter") == 10


def test_redis_answers_for_every_process_when_it_is_up(redis_url, redis_key_prefix):
    first = FallbackCache("", fallback_config(redis_url, prefix=redis_key_prefix))
    second = FallbackCache("", fallback_config(redis_url, prefix=redis_key_prefix))
    first.add("shared", 0, 60)
    first.incr("shared")
    assert second.incr("shared") == 2
    second.clear()
    assert first.get("shared") is None


def test_a_batch_of_public_pages_costs_one_redis_round_trip(client, settings, own_redis):
    import redis

    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    server = redis.Redis(port=own_redis.port)

    def counters() -> dict[str, int]:
        # Read over the test's one connection: each call is itself one read on the server.
        stats = server.info("commandstats") | server.info("stats")
        calls = {name: value["calls"] for name, value in stats.items() if name.startswith("cmdstat_")}
        return {**calls, "reads": stats["total_reads_processed"]}

    def spent_by(action) -> dict[str, int]:
        before = counters()
        action()
        after = counters()
        return {
            name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)
        }

    batch = ratelimits.default_tier_batch(settings.RATELIMIT_DEFAULT_PER_MINUTE)

    def get_pages() -> None:
        for _ in range(batch):
            assert client.get("/apply/").status_code == 200
        # The batch is sent as the last response closes; waiting for its answer means Redis
        # has read it, so it falls in this window and not in the next one.
        caches["ratelimit"].read_pending_hits()

    get_pages()  # the app's connection says hello once
    idle = spent_by(lambda: None)
    pages = spent_by(get_pages)
    # A batch of pages: both commands, counted by the server, arrived in one read.
    extra = {name: pages[name] - idle.get(name, 0) for name in pages if pages[name] != idle.get(name, 0)}
    assert extra == {"cmdstat_incrby": 1, "cmdstat_expire": 1, "reads": 1}
    assert [int(server.get(key)) for key in server.keys("*:default:127.0.0.1:*")] == [2 * batch]


def test_the_default_tier_falls_back_too(client, settings, own_redis, monotonic):
    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    own_redis.stop()
    statuses = [client.get("/apply/done/").status_code for _ in range(121)]
    assert statuses == [200] * 120 + [429]


def test_a_request_answered_before_its_view_still_reads_its_count(client, settings, own_redis, tmp_path):
    import redis

    from iama_vetting import maintenance

    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 30  # a batch of one: every request is sent
    settings.MAINTENANCE_FILE = tmp_path / "maintenance.json"
    server = redis.Redis(port=own_redis.port)
    assert client.get("/apply/done/").status_code == 200
    connections = server.info("stats")["total_connections_received"]

    # Counted as it came in, then answered by the maintenance page before any view ran.
    maintenance.switch_on(None)
    assert client.get("/apply/done/").status_code == 503
    maintenance.switch_off()
    assert client.get("/apply/done/").status_code == 200

    caches["ratelimit"].read_pending_hits()
    # Every count reached Redis, and the app's connection was never dropped:
    # no reply was left unread to answer a later request's question.
    assert [int(server.get(key)) for key in server.keys("*default:*")] == [3]
    assert server.info("stats")["total_connections_received"] == connections


def test_a_public_page_is_counted_after_its_response_is_sent(settings, own_redis):
    """The count stays off the page's time: it reaches Redis when the server closes the response."""
    import redis

    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 30  # a batch of one: every request is sent
    server = redis.Redis(port=own_redis.port)
    environ = {"PATH_INFO": "/apply/", "HTTP_HOST": "testserver"}
    setup_testing_defaults(environ)
    statuses = []
    response = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    body = b"".join(response)
    assert statuses == ["200 OK"] and b"<form" in body
    assert server.keys("*default:*") == []

    response.close()  # what gunicorn does once the client has every byte
    caches["ratelimit"].read_pending_hits()  # as the worker's next request does
    assert [int(server.get(key)) for key in server.keys("*default:*")] == [1]


def test_a_count_redis_never_answered_is_counted_in_memory(client, settings, own_redis, monotonic, caplog):
    import redis

    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 30  # a batch of one: every request is sent
    assert client.get("/apply/done/").status_code == 200  # connected, and its count read
    redis.Redis(port=own_redis.port).client_pause(10_000)
    assert client.get("/apply/done/").status_code == 200  # its count is sent but never answered
    own_redis.stop()
    # The next request finds no answer: that count goes to memory with the rest.
    statuses = [client.get("/apply/done/").status_code for _ in range(30)]
    assert statuses == [200] * 29 + [429]
    assert len(cache_errors(caplog)) == 1


def test_a_refused_request_is_not_counted_again(client, settings, own_redis):
    import redis

    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(own_redis.url)}
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 3
    statuses = [client.get("/apply/done/").status_code for _ in range(6)]
    caches["ratelimit"].read_pending_hits()
    assert statuses == [200, 200, 200, 429, 429, 429]
    server = redis.Redis(port=own_redis.port)
    assert [int(server.get(key)) for key in server.keys("*:default:127.0.0.1:*")] == [3]
    # Refusals have their own hourly count, for security_report.
    assert [int(server.get(key)) for key in server.keys("*:refusals:default:*")] == [3]


def test_refused_requests_cannot_crowd_a_clients_sign_in_counters_out_of_the_fallback(
    client, settings, agent, monkeypatch
):
    """Each refused password reset for a new address used to add counters of its own: a few
    hundred, and the fallback forgot the oldest, the client's sign-in counters among them."""
    # The unreachable port's "down" state stays with this test, not with a later server on it.
    monkeypatch.setattr(fallback_module, "_health_by_location", {})
    # Full at Django's default 300 rather than 50,000: what 400 new counters do here, 17,000 do there.
    monkeypatch.setattr(fallback_module, "FALLBACK_MAX_ENTRIES", 300)
    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(f"redis://127.0.0.1:{free_port()}/0")}

    def guess() -> int:
        return client.post("/admin/login/", {"username": "agent", "password": "wrong"}).status_code

    assert [guess() for _ in range(ratelimits.ADMIN_LOGIN_PER_USERNAME.per_minute + 1)][-1] == 429
    for n in range(400):
        client.post("/admin/password_reset/", {"email": f"someone-{n}@example.org"})
    assert guess() == 429


def test_a_forked_worker_never_reads_or_takes_its_parents_redis_replies(own_redis):
    # gunicorn forks workers from a parent that may have counted: both hold the parent's socket.
    cache = FallbackCache("", fallback_config(own_redis.url, prefix=f"fork-{uuid.uuid4().hex}"))
    parent_totals = []
    cache.hit("parent", 60)
    cache.hit_many_later({"parent": 5}, 60, parent_totals.append)  # its reply waits on the socket
    child = os.fork()
    if child == 0:
        exit_code = 1
        try:
            exit_code = 0 if cache.hit("child", 60) == 1 else 1
        finally:
            os._exit(exit_code)
    _pid, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's count was not its own"
    cache.read_pending_hits()
    # From Redis: counting in the fallback's memory instead would give 5.
    assert parent_totals == [{"parent": 6}]


class RedisRefusingTheFirstCount:
    """Answers INCRBY and EXPIRE like Redis, except the first INCRBY, refused as Redis refuses
    a key that holds no number: its EXPIRE's reply still follows."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.counts: dict[bytes, int] = {}
        self.refused = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        with connection, reader:
            while command := self._read_command(reader):
                name = command[0].upper()
                if name == b"INCRBY" and not self.refused:
                    self.refused = True
                    reply = b"-ERR value is not an integer or out of range\r\n"
                elif name == b"INCRBY":
                    self.counts[command[1]] = self.counts.get(command[1], 0) + int(command[2])
                    reply = b":%d\r\n" % self.counts[command[1]]
                elif name == b"EXPIRE":
                    reply = b":1\r\n"
                elif name == b"HELLO":  # the client's greeting: the protocol it asked for
                    reply = b"%%1\r\n$5\r\nproto\r\n:%s\r\n" % command[1]
                else:  # CLIENT SETINFO
                    reply = b"+OK\r\n"
                try:
                    connection.sendall(reply)
                except OSError:  # the client hung up
                    return

    @staticmethod
    def _read_command(reader) -> list[bytes] | None:
        header = reader.readline()
        if not header.startswith(b"*"):
            return None
        command = []
        for _ in range(int(header[1:])):
            length = int(reader.readline()[1:])
            command.append(reader.read(length + 2)[:-2])
        return command


def test_a_reply_left_unread_after_a_refused_count_never_answers_the_next_count(monotonic):
    redis = RedisRefusingTheFirstCount()
    with redis.listener:
        cache = FallbackCache(
            "", fallback_config(f"redis://127.0.0.1:{redis.port}/0", prefix=f"unread-{uuid.uuid4().hex}")
        )
        # Refused: this count falls back, and EXPIRE's reply is left on the connection.
        assert cache.hit("counter", 60) == 1
        monotonic.now += fallback_module.RETRY_SECONDS
        # Asked again, Redis's own counts: a kept connection would answer each with the reply before.
        assert cache.hit("counter", 60) == 1
        assert cache.hit("counter", 60) == 2
