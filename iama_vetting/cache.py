"""A shared cache that falls back to local memory while it is unreachable.

Used for the rate-limit counters (settings.CACHES["ratelimit"]). When Redis
refuses, times out or errors, each call is answered by a per-process
local-memory cache instead: limiting goes on per process (never unlimited,
never a 500). Redis is tried again RETRY_SECONDS after a failure, and shared
limiting resumes as soon as it answers. One error is logged per minute.

Configuration: OPTIONS["PRIMARY"] is an ordinary cache configuration (BACKEND,
LOCATION, KEY_PREFIX, OPTIONS) for the shared cache (local memory in
development, where it never fails).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
# Counters one process keeps during an outage. When full, LocMemCache forgets a third of them,
# the oldest first: at Django's default of 300, a client making new keys (a password reset for
# a new address each time) would soon make it forget its own sign-in counters. About 200 bytes
# each, so at most some 10 MB a process, and only while Redis is away.
FALLBACK_MAX_ENTRIES = 50_000
LOG_INTERVAL_SECONDS = 60.0
# What "unreachable" means: anything the Redis client raises, and socket errors.
UNREACHABLE = (redis.exceptions.RedisError, OSError)


class _Health:
    """Process-wide state of one primary cache (Django makes a cache object per thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.last_logged = float("-inf")
        self.down = False

    def usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, error: Exception, location: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.down = True
            self.down_until = now + RETRY_SECONDS
            if now - self.last_logged < LOG_INTERVAL_SECONDS:
                return
            self.last_logged = now
        # The error's class, not its text: a connection error can echo the URL with its password.
        logger.error(
            "Shared cache %s is unreachable (%s); counting in this process's memory until it returns.",
            location,
            type(error).__name__,
        )

    def succeeded(self, location: str) -> None:
        if not self.down:
            return
        with self.lock:
            if not self.down:
                return
            self.down = False
        logger.warning("Shared cache %s answers again; shared counting resumed.", location)


_health_by_location: dict[str, _Health] = {}
_health_lock = threading.Lock()


def _health_for(location: str) -> _Health:
    with _health_lock:
        return _health_by_location.setdefault(location, _Health())


def _hit(cache: BaseCache, key: str, timeout: int) -> int:
    return _hit_many(cache, {key: 1}, timeout)[key]


def _hit_many(cache: BaseCache, counts: dict[str, int], timeout: int) -> dict[str, int]:
    if isinstance(cache, RedisCache):
        connection = _hit_connection(cache)
        _send_redis_hits(connection, cache, counts, timeout)
        return _read_redis_hits(connection, counts)
    totals = {}
    for key, amount in counts.items():
        cache.add(key, 0, timeout)
        totals[key] = cache.incr(key, amount)
    return totals


def _hit_connection(cache: RedisCache) -> redis.Connection:
    """This thread's own connection for counting.

    Every public page pays for counting, so it skips the client's pool: a
    checkout costs a lock and a poll() on the socket, a third of the call.
    """
    connection = getattr(cache, "_rvi_hit_connection", None)
    if connection is None or connection.pid != os.getpid():
        # Writes always go to the first server, as in Django's backend.
        pool = cache._cache._get_connection_pool(write=True)
        connection = pool.connection_class(**pool.connection_kwargs)
        connection.rvi_pending_hits = None
        cache._rvi_hit_connection = connection
    return connection


def _send_redis_hits(
    connection: redis.Connection, cache: RedisCache, counts: dict[str, int], timeout: int
) -> None:
    """INCRBY and EXPIRE for every key, pipelined: one round trip; `_read_redis_hits` reads the replies.

    EXPIRE on every hit only moves the end of a key that callers already
    scope to one window, and works on any Redis version.
    """
    commands = []
    for key, amount in counts.items():
        redis_key = cache.make_key(key)
        commands += [("INCRBY", redis_key, amount), ("EXPIRE", redis_key, timeout)]
    try:
        connection.send_packed_command(connection.pack_commands(commands))
    except BaseException:
        connection.disconnect()
        raise


def _read_redis_hits(connection: redis.Connection, counts: dict[str, int]) -> dict[str, int]:
    totals = {}
    try:
        for key in counts:
            totals[key] = int(connection.read_response())
            connection.read_response()
    except BaseException:
        # A reply left unread would answer the next call's question.
        connection.disconnect()
        raise
    return totals


class FallbackCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        primary = dict(params["OPTIONS"]["PRIMARY"])
        backend = import_string(primary.pop("BACKEND"))
        primary_location = primary.pop("LOCATION", "")
        self._primary = backend(primary_location, primary)
        # For logs: host and port only, never a password from the URL.
        self._name = primary_location.rpartition("@")[2] if "://" in primary_location else primary_location
        self._health = _health_for(f"{primary_location}|{primary.get('KEY_PREFIX', '')}")
        # Named, so all threads of the process share the same fallback counters.
        self._fallback = LocMemCache(
            f"fallback:{primary_location}|{primary.get('KEY_PREFIX', '')}",
            {"TIMEOUT": params.get("TIMEOUT", 300), "OPTIONS": {"MAX_ENTRIES": FALLBACK_MAX_ENTRIES}},
        )

    def _either(self, operation: Callable[[BaseCache], Any]) -> Any:
        if self._health.usable():
            try:
                result = operation(self._primary)
            except UNREACHABLE as error:
                self._health.failed(error, self._name)
            else:
                self._health.succeeded(self._name)
                return result
        return operation(self._fallback)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._either(lambda cache: getattr(cache, method)(*args, **kwargs))

    def hit(self, key: str, timeout: int) -> int:
        """Count one event under `key`; the new count.

        One round trip to Redis, where django-ratelimit's add-then-incr takes
        two or three. The key's expiry is pushed to `timeout` seconds on
        every hit, so put the window in the key.
        """
        self.read_pending_hits()
        return self._either(lambda cache: _hit(cache, key, timeout))

    def hit_many_later(
        self, counts: dict[str, int], timeout: int, on_totals: Callable[[dict[str, int]], None]
    ) -> None:
        """Add `counts[key]` events under each key without waiting for Redis to answer.

        The counts are sent now, in one round trip; `on_totals({key: new count})`
        is called when this thread next uses `hit`, `hit_many_later` or
        `read_pending_hits`, by which time the answer has long arrived, so no
        caller waits for it. Without Redis, `on_totals` is called at once.
        """
        self.read_pending_hits()
        if isinstance(self._primary, RedisCache) and self._health.usable():
            connection = _hit_connection(self._primary)
            try:
                _send_redis_hits(connection, self._primary, counts, timeout)
            except UNREACHABLE as error:
                self._health.failed(error, self._name)
            else:
                connection.rvi_pending_hits = (counts, timeout, on_totals)
                return
        on_totals(self._either(lambda cache: _hit_many(cache, counts, timeout)))

    def read_pending_hits(self) -> None:
        """Read the answer to this thread's last `hit_many_later`, if not read yet, and pass it on."""
        connection = getattr(self._primary, "_rvi_hit_connection", None)
        # A forked worker never reads its parent's socket: it counts on a connection of its own.
        if connection is None or connection.rvi_pending_hits is None or connection.pid != os.getpid():
            return
        counts, timeout, on_totals = connection.rvi_pending_hits
        connection.rvi_pending_hits = None
        try:
            totals = _read_redis_hits(connection, counts)
        except UNREACHABLE as error:
            self._health.failed(error, self._name)
            totals = _hit_many(self._fallback, counts, timeout)
        else:
            self._health.succeeded(self._name)
        on_totals(totals)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("add", key, value, timeout, version)

    def get(self, key, default=None, version=None):
        return self._call("get", key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("set", key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call("touch", key, timeout, version)

    def delete(self, key, version=None):
        return self._call("delete", key, version)

    def incr(self, key, delta=1, version=None):
        return self._call("incr", key, delta, version)

    def has_key(self, key, version=None):
        return self._call("has_key", key, version)

    def clear(self):
        """Forget every counter: the fallback's, and the primary's under its own prefix only."""
        self._fallback.clear()
        if isinstance(self._primary, RedisCache):
            # Never FLUSHDB: the Redis database may hold other keys (the default cache).
            client = self._primary._cache.get_client(write=True)
            pattern = self._primary.make_key("*")
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
        else:
            self._primary.clear()

    def close(self, **kwargs):
        self._primary.close(**kwargs)
