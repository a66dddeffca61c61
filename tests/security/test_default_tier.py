"""The default tier counts in batches: exact within one process, a few more across processes.

Each `DefaultTier` here stands for one worker process; all of them count in one real Redis.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
import redis
import time_machine
from django.core.cache import caches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iama_vetting.ratelimits import DefaultTier, default_tier_batch
from tests.security.test_fallback_cache import fallback_config

pytestmark = pytest.mark.redis

LIMIT = 120
BATCH = default_tier_batch(LIMIT)
# Minute-aligned, so that nothing in a test crosses into the next minute by itself.
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
clients = (f"2001:db8:{number:x}::" for number in itertools.count(1))


@pytest.fixture(autouse=True)
def shared_store(settings, redis_url, redis_key_prefix):
    settings.CACHES = {**settings.CACHES, "ratelimit": fallback_config(redis_url, prefix=redis_key_prefix)}
    settings.RATELIMIT_DEFAULT_PER_MINUTE = LIMIT


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def serve(process: DefaultTier, client: str) -> bool:
    """What the middleware does with one request: refuse it, or serve and count it."""
    if process.seconds_refused(client) is not None:
        return False
    process.count(client)
    return True


def test_the_batch_is_a_sixteenth_of_the_limit_between_one_and_eight():
    assert [default_tier_batch(limit) for limit in (1, 31, 32, 120, 128, 10**9)] == [1, 1, 2, 7, 8, 8]


def test_one_process_is_exact(clock):
    process, client = DefaultTier(), next(clients)
    assert [serve(process, client) for _ in range(LIMIT + 10)] == [True] * LIMIT + [False] * 10


@given(
    choices=st.integers(min_value=2, max_value=3).flatmap(
        lambda processes: st.tuples(
            st.just(processes),
            st.lists(st.integers(0, processes - 1), min_size=LIMIT, max_size=LIMIT + 60),
        )
    )
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_processes_let_at_most_a_batch_each_past_the_limit_and_then_all_refuse(clock, choices):
    process_count, order = choices
    processes, client = [DefaultTier() for _ in range(process_count)], next(clients)
    served = sum(serve(processes[number], client) for number in order)
    # Never refused early.
    assert served >= LIMIT
    # Then each process in turn, again and again: each other process may have counted a batch unseen,
    # and every process, counting on, learns the client is over.
    for _ in range(3 * BATCH):
        served += sum(serve(process, client) for process in processes)
    assert served <= LIMIT + (process_count - 1) * BATCH
    assert not any(serve(process, client) for process in processes)


def test_a_client_near_the_limit_is_sent_on_every_request(clock, redis_url, redis_key_prefix):
    import redis

    process, client = DefaultTier(), next(clients)
    server = redis.Redis.from_url(redis_url)
    in_store = []
    for _ in range(LIMIT):
        serve(process, client)
        caches["ratelimit"].read_pending_hits()
        in_store.append(sum(int(server.get(key)) for key in server.keys(f"{redis_key_prefix}*:default:*")))
    # Far from the limit, only whole batches were sent.
    assert all(count % BATCH == 0 for count in in_store[: LIMIT - 2 * BATCH])
    # Near it, the request that reaches the limit is sent at once, not with a batch.
    assert in_store[-1] == LIMIT


def test_a_new_minute_starts_from_zero(clock):
    process, client = DefaultTier(), next(clients)
    assert [serve(process, client) for _ in range(LIMIT + 1)][-2:] == [True, False]
    clock.move_to(START + timedelta(minutes=1))
    assert serve(process, client)


def test_an_answer_read_after_its_minute_ended_refuses_nobody(clock):
    process, client = DefaultTier(), next(clients)
    clock.move_to(START + timedelta(seconds=59))
    for _ in range(LIMIT):
        serve(process, client)  # the last count, at the limit, is sent and not answered yet
    clock.move_to(START + timedelta(minutes=1))
    # The new minute's first batch, of other clients, reads that answer before it is sent.
    for _ in range(BATCH):
        process.count(next(clients))
    assert serve(process, client)


def test_the_shared_count_outlives_its_minute(clock, redis_url, redis_key_prefix):
    process, client = DefaultTier(), next(clients)
    for _ in range(BATCH):
        serve(process, client)
    caches["ratelimit"].read_pending_hits()
    [key] = redis.Redis.from_url(redis_url).keys(f"{redis_key_prefix}*:default:*")
    # Another worker may send its first batch for this client in the minute's last second.
    assert redis.Redis.from_url(redis_url).ttl(key) >= 60
