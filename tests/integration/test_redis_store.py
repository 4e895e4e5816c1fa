"""The Redis limit store against a real redis-server: the same edges as the in-memory
store, state shared by separate clients (replicas), key expiry, and failing fast and
recovering when the server goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import GatewayError
from service.limits.buckets import Rate
from service.limits.redis_store import RedisLimitStore
from service.limits.store import InMemoryLimitStore, LimitStoreError
from service.shared_store.connection import SharedRedis
from service.shared_store.guard import GuardSettings, StoreGuard
from tests.fakes.redis_server import RedisServer, redis_server

# Refills nothing measurable while a test runs: decisions do not depend on timing.
FROZEN = Rate(per_second=1e-9, burst=10.0)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def client_of(server: RedisServer) -> redis.Redis:
    # The outages here are a stopped server, refused at once: the timeouts only have to be
    # longer than a busy machine's pauses.
    return redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)


@pytest_asyncio.fixture
async def raw(server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = client_of(server)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def store(server: RedisServer, raw: redis.Redis) -> AsyncIterator[RedisLimitStore]:
    store = RedisLimitStore(SharedRedis(client_of(server), "t:"))
    yield store
    await store.aclose()


async def test_a_per_minute_bucket_allows_its_burst_then_says_how_long_to_wait(
    store: RedisLimitStore,
) -> None:
    rate = Rate.per_minute(3)
    started = time.monotonic()
    for _ in range(3):
        assert (await store.take("requests:subject:alice", 1, rate, 0.0)).allowed
    refused = await store.take("requests:subject:alice", 1, rate, 0.0)
    elapsed = time.monotonic() - started
    assert not refused.allowed
    # One unit refills in 20 s, less what refilled (on the server's clock) since the first
    # take: at most the time the test measured around the takes.
    assert 20.0 - elapsed - 0.01 <= refused.retry_after <= 20.0
    assert (await store.take("requests:subject:bob", 1, rate, 0.0)).allowed


async def test_keys_carry_the_prefix_and_expire_when_the_bucket_would_be_full(
    store: RedisLimitStore, raw: redis.Redis
) -> None:
    await store.take("requests:subject:alice", 1, Rate.per_minute(6), 0.0)
    assert await raw.keys("*") == [b"t:requests:subject:alice"]
    ttl_ms = await raw.pttl("t:requests:subject:alice")
    # One unit of six per minute refills in 10 s (plus a second of slack).
    assert 10_000 < ttl_ms <= 11_000


async def test_refill_follows_the_server_clock(store: RedisLimitStore) -> None:
    rate = Rate(per_second=1.0, burst=1.0)  # one unit a second: two quick takes fit in it
    assert (await store.take("k", 1, rate, 0.0)).allowed
    refused = await store.take("k", 1, rate, 0.0)
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after + 0.05)  # at least the refill it asked for
    # `now` is ignored: the server's TIME has moved on.
    assert (await store.take("k", 1, rate, 0.0)).allowed


async def test_debt_delays_and_give_back_is_capped_at_the_burst(store: RedisLimitStore) -> None:
    assert (await store.take("tokens", 4, FROZEN, 0.0)).allowed
    await store.adjust("tokens", 10, FROZEN, 0.0)  # used 10 more than estimated: level -4
    refused = await store.take("tokens", 1, FROZEN, 0.0)
    assert not refused.allowed
    await store.adjust("tokens", -100, FROZEN, 0.0)  # give back far more than was taken
    for _ in range(10):
        assert (await store.take("tokens", 1, FROZEN, 0.0)).allowed
    assert not (await store.take("tokens", 1, FROZEN, 0.0)).allowed


async def test_a_take_above_the_burst_fits_only_a_full_bucket(store: RedisLimitStore) -> None:
    assert (await store.take("big", 25, FROZEN, 0.0)).allowed  # full bucket: allowed, debt
    assert not (await store.take("big", 1, FROZEN, 0.0)).allowed


async def test_spend_adds_up_and_lives_at_least_its_ttl(
    store: RedisLimitStore, raw: redis.Redis
) -> None:
    assert await store.spent("usd:subject:alice:2026-12") == 0
    assert await store.add_spend("usd:subject:alice:2026-12", 1_500, ttl=100.0) == 1_500
    assert await store.add_spend("usd:subject:alice:2026-12", 2_000, ttl=50.0) == 3_500
    assert await store.spent("usd:subject:alice:2026-12") == 3_500
    ttl_ms = await raw.pttl("t:usd:subject:alice:2026-12")
    assert 99_000 < ttl_ms <= 100_000, "a shorter ttl never cuts the longer one"


async def test_two_clients_share_one_bucket_as_replicas_do(
    server: RedisServer, store: RedisLimitStore
) -> None:
    other = RedisLimitStore(SharedRedis(client_of(server), "t:"))
    try:
        rate = Rate.per_minute(4)
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).take("requests:tenant:acme", 1, rate, 0.0)
                for i in range(10)
            )
        )
        assert sum(result.allowed for result in results) == 4
        await other.add_spend("usd:tenant:acme:d", 7, ttl=60.0)
        assert await store.spent("usd:tenant:acme:d") == 7
    finally:
        await other.aclose()


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["take", "adjust"]), st.integers(min_value=-12, max_value=25)),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
async def test_same_decisions_as_the_in_memory_store(
    store: RedisLimitStore, raw: redis.Redis, operations: list[tuple[str, int]]
) -> None:
    await raw.flushdb()
    memory = InMemoryLimitStore()
    for operation, amount in operations:
        if operation == "take":
            amount = abs(amount)
            expected = await memory.take("k", amount, FROZEN, 0.0)
            got = await store.take("k", amount, FROZEN, 0.0)
            assert got.allowed == expected.allowed
            if not got.allowed:
                assert got.retry_after == pytest.approx(expected.retry_after, rel=1e-3)
        else:
            await memory.adjust("k", amount, FROZEN, 0.0)
            await store.adjust("k", amount, FROZEN, 0.0)


async def test_an_outage_pauses_the_store_after_failures_in_a_row_and_it_recovers() -> None:
    now = [0.0]
    guard = StoreGuard(GuardSettings(failures_to_pause=3, pause=5.0), lambda: now[0])
    with redis_server() as server:
        store = RedisLimitStore(SharedRedis(client_of(server), guard=guard))
        try:
            assert await store.shared.reachable()
            assert (await store.take("k", 1, FROZEN, 0.0)).allowed
            server.stop()
            for _ in range(3):
                with pytest.raises(LimitStoreError) as caught:
                    await store.take("k", 1, FROZEN, 0.0)
                assert "127.0.0.1" not in str(caught.value), "no URL in the error"
            assert guard.failures == 3
            # Paused: operations fail without going to the network, and are counted.
            for _ in range(5):
                with pytest.raises(LimitStoreError, match="paused"):
                    await store.spent("k")
            assert (guard.failures, guard.skipped) == (3, 5)
            server.start()
            assert not await store.shared.reachable(), "still paused: not asked"
            now[0] += 5.0  # the pause is over: the next operation probes
            assert await store.shared.reachable()
            assert (await store.take("k", 1, FROZEN, 0.0)).allowed
        finally:
            await store.aclose()


async def test_a_slow_bucket_expires_within_a_day(store: RedisLimitStore, raw: redis.Redis) -> None:
    # One unit an hour: full again in 3600 s; one unit a year would be capped at a day.
    assert (await store.take("hourly", 1, Rate(per_second=1 / 3600, burst=1.0), 0.0)).allowed
    assert 3_600_000 < await raw.pttl("t:hourly") <= 3_601_000
    assert (await store.take("yearly", 1, Rate(per_second=1 / 31_536_000, burst=1.0), 0.0)).allowed
    assert 86_000_000 < await raw.pttl("t:yearly") <= 86_400_000


async def test_a_burst_waits_for_a_pooled_connection_instead_of_failing(
    server: RedisServer, raw: redis.Redis
) -> None:
    from llmgateway.config.v1 import config_pb2

    config = config_pb2.RedisStoreConfig(url_env="URL", key_prefix="burst:", max_connections=4)
    config.timeout.FromJsonString("2s")
    store = RedisLimitStore(SharedRedis.from_config(config, {"URL": server.url}))
    try:
        rate = Rate.per_minute(30)
        decisions = await asyncio.gather(*(store.take("k", 1, rate, 0.0) for _ in range(100)))
        assert sum(d.allowed for d in decisions) == 30, "the limit held through the burst"
        assert await store.shared.reachable()
    finally:
        await store.aclose()


async def test_what_was_taken_is_given_back_when_a_later_check_fails(
    server: RedisServer, raw: redis.Redis
) -> None:
    from llmgateway.config.v1 import config_pb2

    from service.auth.identity import Identity
    from service.limits.limiter import Limiter

    store = RedisLimitStore(SharedRedis(client_of(server), "gb:"))
    limits = config_pb2.LimitsConfig()
    limits.subject.requests_per_minute = 2
    limits.subject.tokens_per_minute = 1000
    limiter = Limiter.from_config(limits, store=store)
    alice = Identity("alice")
    try:
        await raw.set("gb:tokens:subject:|alice", "not a bucket")  # the tokens check fails
        await limiter.admit(alice, 10)  # let through (fail open), the request given back
        assert limiter.failures.count == 1
        await raw.delete("gb:tokens:subject:|alice")
        for _ in range(2):
            await limiter.admit(alice, 10)  # both requests of the minute are still there
        with pytest.raises(GatewayError) as caught:
            await limiter.admit(alice, 10)
        assert caught.value.reason == "CALLER_RATE_LIMITED"
    finally:
        await store.aclose()
