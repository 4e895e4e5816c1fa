"""The shared store's pure parts: its guard (a breaker on the store), the spend kept
during an outage and charged after it, cache entry encoding, the breaker's peer hooks,
and the configuration rules of the store and what opts in to it."""

from __future__ import annotations

import pytest
from llmgateway.v1 import chat_pb2, route_pb2

from service.auth.identity import Identity
from service.config import ConfigError, parse_config
from service.limits.buckets import Decision, Rate
from service.limits.limiter import Limiter, Limits
from service.limits.pending import PendingSpends
from service.limits.store import InMemoryLimitStore, LimitStoreError
from service.routing.breaker import BreakerSettings, CircuitBreaker, State
from service.routing.redis_cache import decode, encode
from service.shared_store.guard import GuardSettings, GuardState, StoreGuard


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the guard ------------------------------------------------------------------------


def test_the_guard_pauses_after_failures_in_a_row_and_probes_once_after_the_pause() -> None:
    clock = Clock()
    guard = StoreGuard(GuardSettings(failures_to_pause=3, pause=2.0), clock)
    for _ in range(2):
        assert guard.allow()
        guard.failure()
    assert guard.allow()
    guard.success()  # a success in between: the count starts again
    for _ in range(2):
        assert guard.allow()
        guard.failure()
    assert guard.state is GuardState.CLOSED
    assert guard.allow()
    guard.failure()
    assert guard.state is GuardState.OPEN and guard.paused_remaining() == 2.0
    assert [guard.allow() for _ in range(4)] == [False] * 4
    assert guard.skipped == 4
    clock.now = 2.0
    assert guard.allow(), "the pause is over: one probe"
    assert not guard.allow(), "and only one"
    guard.failure()  # the probe failed: paused again at once
    assert guard.state is GuardState.OPEN and guard.paused_remaining() == 2.0
    clock.now = 4.0
    assert guard.allow()
    guard.success()
    assert guard.state is GuardState.CLOSED
    assert guard.stats() == {"failures": 6, "skipped": 5, "paused": 2, "open": 0}


def test_a_probe_that_ends_without_a_verdict_lets_the_next_one_probe() -> None:
    clock = Clock()
    guard = StoreGuard(GuardSettings(failures_to_pause=1, pause=1.0), clock)
    guard.failure()
    clock.now = 1.0
    assert guard.allow()
    guard.release()  # cancelled
    assert guard.allow()


# --- spend kept during an outage -------------------------------------------------------


def test_pending_spend_is_summed_per_key_bounded_and_expires() -> None:
    pending = PendingSpends(max_keys=2)
    assert pending.add("a", 5, expires=100.0)
    assert pending.add("a", 7, expires=200.0)
    assert pending.add("b", 1, expires=50.0)
    assert not pending.add("c", 1, expires=100.0), "no room for a third key"
    assert pending.add("a", 1, expires=100.0), "a key already kept always has room"
    assert len(pending) == 2
    live = pending.take(now=60.0)
    assert [(e.key, e.amount, e.expires, e.spends) for e in live] == [("a", 13, 200.0, 3)]
    assert pending.stats() == {"queued": 4, "charged": 0, "dropped": 2, "pending": 0}
    pending.restore(live)
    assert pending.add("a", 2, expires=100.0)
    (entry,) = pending.take(now=60.0)
    assert (entry.amount, entry.spends) == (15, 4)
    pending.charged_one(entry)
    assert pending.stats() == {"queued": 5, "charged": 4, "dropped": 2, "pending": 0}


class FlakyStore(InMemoryLimitStore):
    """An in-memory store that fails while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise LimitStoreError("down")

    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        self._check()
        return await super().take(key, amount, rate, now)

    async def spent(self, key: str) -> int:
        self._check()
        return await super().spent(key)

    async def add_spend(self, key: str, nanos: int, ttl: float) -> int:
        self._check()
        return await super().add_spend(key, nanos, ttl)

    async def adjust(self, key: str, delta: float, rate: Rate, now: float) -> None:
        self._check()
        await super().adjust(key, delta, rate, now)


def limiter_on(store: FlakyStore, wall: Clock | None = None) -> Limiter:
    budget = Limits(budget_nanos=10_000_000_000)
    wall = wall or Clock()
    wall.now = wall.now or 1_767_225_600.0  # 2026-01-01
    return Limiter(
        subject_default=Limits(tokens_per_minute=100),
        tenant_default=budget,
        subjects={},
        tenants={},
        clock=lambda: 0.0,  # the buckets never refill here
        wall_clock=wall,
        store=store,
    )


async def test_spend_of_a_call_let_through_during_an_outage_is_charged_when_it_is_back() -> None:
    store = FlakyStore()
    limiter = limiter_on(store)
    acme = Identity("alice", tenant="acme", issuer="dev", authenticated=True)
    store.down = True
    reservation = await limiter.admit(acme, 10)  # let through: the store cannot check
    await reservation.settle(route_pb2.Usage(total_tokens=40, cost_usd=0.25))
    assert limiter.failures.count == 3  # admission, the tokens, the cost
    assert len(limiter.pending) == 2
    await limiter.charge_pending()  # still down: kept
    assert len(limiter.pending) == 2
    store.down = False
    await limiter.charge_pending()
    assert len(limiter.pending) == 0
    assert await store.spent("usd:tenant:dev|acme:2026-01") == 250_000_000
    assert limiter.pending.stats()["charged"] == 2
    # The 40 tokens were charged to alice's bucket of 100 a minute: 60 are left.
    bucket = "tokens:subject:dev|alice"
    assert not (await store.take(bucket, 61, Rate.per_minute(100), 0.0)).allowed
    assert (await store.take(bucket, 60, Rate.per_minute(100), 0.0)).allowed


async def test_token_usage_older_than_its_minute_is_dropped_not_charged() -> None:
    store = FlakyStore()
    wall = Clock()
    limiter = limiter_on(store, wall)
    acme = Identity("alice", tenant="acme", issuer="dev", authenticated=True)
    store.down = True
    reservation = await limiter.admit(acme, 10)
    await reservation.settle(route_pb2.Usage(total_tokens=40, cost_usd=0.25))
    wall.now += 61.0
    store.down = False
    await limiter.charge_pending()
    assert limiter.pending.stats() == {"queued": 2, "charged": 1, "dropped": 1, "pending": 0}
    assert (await store.take("tokens:subject:dev|alice", 100, Rate.per_minute(100), 0.0)).allowed


# --- cache entries ---------------------------------------------------------------------


def test_cache_entries_are_compressed_and_read_back_or_missed() -> None:
    response = chat_pb2.ChatResponse(id="r1")
    response.message.parts.add().text = "the same words again " * 50
    payload = encode(response)
    assert len(payload) < len(response.SerializeToString()) / 4
    assert decode(payload, chat_pb2.ChatResponse) == response
    assert decode(b"?" + payload[1:], chat_pb2.ChatResponse) is None, "unknown format: a miss"
    assert decode(payload[:-3], chat_pb2.ChatResponse) is None, "cut short: a miss"


# --- breakers shared with peers --------------------------------------------------------


def test_a_breaker_follows_a_peers_opening_without_publishing_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(jitter=0.0, shared=True), clock)
    published: list[float] = []
    breaker.on_open = published.append
    breaker.open_from_peer(4.0)
    assert breaker.state is State.OPEN and breaker.open_remaining() == 4.0
    assert breaker.times_opened == 1 and published == []
    breaker.open_from_peer(2.0)  # an older, shorter view changes nothing
    assert breaker.open_remaining() == 4.0
    breaker.peer_closed()  # the peer's probe succeeded: this one may probe now
    assert breaker.allow() and breaker.state is State.HALF_OPEN
    breaker.hold(3.0)  # another replica holds the probe
    assert breaker.state is State.OPEN and not breaker.allow()
    breaker.peer_closed()
    assert not breaker.allow(), "a hold ends with the probe, not with a peer's close"
    clock.now = 3.0
    assert breaker.allow()
    breaker.failure()
    assert published == [10.0], "its own opening (a failed probe doubles) is published"


# --- configuration ---------------------------------------------------------------------

BASE = "auth: {disabled: true}\nproviders:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
URL = {"GW_REDIS_URL": "redis://127.0.0.1:6379"}


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        (
            "redis: {url_env: GW_REDIS_URL}\nlimits: {redis: {url_env: GW_REDIS_URL}}\n",
            "limits.redis",
            "set one of them",
        ),
        ("cache: {store: CACHE_STORE_REDIS}\n", "cache.store", "needs the shared store"),
        ("routing: {breaker: {shared: true}}\n", "routing.breaker.shared", "shared store"),
        ("redis: {url_env: GW_REDIS_URL, pause: 0s}\n", "redis.pause", "positive"),
        ("redis: {url_env: GW_REDIS_URL, failures_to_pause: 0}\n", "redis.failures_to_pause", "1"),
        ("redis: {url_env: NOT_SET}\n", "redis.url_env", "NOT_SET is not set"),
    ],
)
def test_shared_store_errors_name_the_field(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + text, URL)
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_the_shared_store_under_either_name_serves_the_cache_and_breakers() -> None:
    for store in ("redis: {url_env: GW_REDIS_URL}\n", "limits: {redis: {url_env: GW_REDIS_URL}}\n"):
        parse_config(
            BASE
            + store
            + "cache: {store: CACHE_STORE_REDIS}\nrouting: {breaker: {shared: true}}\n",
            URL,
        )
