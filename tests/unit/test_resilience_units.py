"""Retry maths, the retry budget and the circuit breaker, with a fake clock."""

from __future__ import annotations

import random

import pytest

from service.routing.breaker import BreakerSettings, CircuitBreaker, State
from service.routing.retry import RetryBudget, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_full_jitter_is_capped_exponential() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=8.0, multiplier=2.0)
    ceilings = [policy.backoff(n, uniform=lambda low, high: high) for n in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(policy.backoff(n, uniform=lambda low, high: low) == 0.0 for n in range(1, 5))
    draws = [policy.backoff(3) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in draws) and len(set(draws)) > 100, "jittered, not fixed"


def test_retry_after_is_a_floor_and_a_too_long_hint_means_fallback() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_retry_after=30.0)
    assert policy.delay(1, 2.5, uniform=lambda low, high: high) == 2.5
    assert policy.delay(1, 0.1, uniform=lambda low, high: high) == 0.5
    assert policy.delay(1, None, uniform=lambda low, high: 0.25) == 0.25
    assert policy.delay(1, 31.0) is None


def test_an_empty_stream_gets_two_attempts_at_most() -> None:
    assert RetryPolicy(max_attempts=3).attempts_for("UPSTREAM_EMPTY_STREAM") == 2
    assert RetryPolicy(max_attempts=1).attempts_for("UPSTREAM_EMPTY_STREAM") == 1
    assert RetryPolicy(max_attempts=5).attempts_for("UPSTREAM_INTERNAL") == 5


def test_retry_budget_keeps_retries_a_small_share() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.5, window=10.0, clock=clock)
    for _ in range(100):
        budget.record_call()
    allowed = sum(budget.try_spend() for _ in range(100))
    assert allowed == 20  # 0.2 x 100 calls (more than 0.5/s x 10 s = 5)
    clock.now += 11  # the window slides: old calls and retries no longer count
    assert sum(budget.try_spend() for _ in range(10)) == 5  # the minimum rate only


def _breaker(clock: Clock, **overrides: float) -> CircuitBreaker:
    settings = BreakerSettings(
        consecutive_failures=3,
        failure_rate=0.5,
        minimum_calls=10,
        window=30,
        cool_down=5,
        max_cool_down=20,
        jitter=0,
    )
    return CircuitBreaker(BreakerSettings(**{**settings.__dict__, **overrides}), clock)


def test_breaker_opens_probes_once_and_closes() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    assert breaker.open_remaining() == pytest.approx(5.0)
    clock.now += 5
    assert breaker.allow(), "one probe after the cool-down"
    assert breaker.state is State.HALF_OPEN
    assert not breaker.allow() and not breaker.allow(), "exactly one probe"
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.allow()
    assert list(breaker.transitions) == ["CLOSED->OPEN", "OPEN->HALF_OPEN", "HALF_OPEN->CLOSED"]


def test_failed_probe_reopens_with_a_longer_cool_down() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    for expected in (10.0, 20.0, 20.0):
        clock.now += 100
        assert breaker.allow()
        breaker.failure()
        assert breaker.state is State.OPEN
        assert breaker.open_remaining() == pytest.approx(expected)
    assert breaker.times_opened == 4


def test_released_probe_lets_another_call_probe() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.now += 5
    assert breaker.allow()
    breaker.release()  # e.g. the caller cancelled: no verdict
    assert breaker.state is State.HALF_OPEN and breaker.allow()


def test_failure_rate_opens_without_a_streak() -> None:
    clock = Clock()
    breaker = _breaker(clock, consecutive_failures=100)
    for i in range(10):
        if i % 2:
            breaker.failure()
        else:
            breaker.success()
    assert breaker.state is State.OPEN


def test_disabled_breaker_never_opens() -> None:
    clock = Clock()
    breaker = _breaker(clock, enabled=False)
    for _ in range(50):
        breaker.failure()
    assert breaker.state is State.CLOSED and breaker.allow()


def _jittered(clock: Clock, seed: int, jitter: float = 0.2) -> CircuitBreaker:
    settings = BreakerSettings(consecutive_failures=1, cool_down=5, max_cool_down=20, jitter=jitter)
    return CircuitBreaker(settings, clock, random.Random(seed).uniform)


def test_cool_downs_are_jittered_within_bounds() -> None:
    clock = Clock()
    first: list[float] = []
    doubled: list[float] = []
    for seed in range(200):
        breaker = _jittered(clock, seed)
        breaker.failure()
        first.append(breaker.open_remaining())
        clock.now += 100
        assert breaker.allow()
        breaker.failure()  # the probe failed: the nominal cool-down doubles to 10 s
        doubled.append(breaker.open_remaining())
    assert all(4.0 <= d <= 6.0 for d in first), "within ±20 % of 5 s"
    assert all(8.0 <= d <= 12.0 for d in doubled), "within ±20 % of 10 s"
    assert min(first) < 4.2 and max(first) > 5.8, "spread over the whole range"
    assert len({round(d, 6) for d in first}) > 150, "replicas do not open in lock-step"
    again = _jittered(clock, 7)
    again.failure()
    assert again.open_remaining() == pytest.approx(first[7]), "the same seed, the same one"


def test_jitter_draws_within_the_configured_factor() -> None:
    clock = Clock()
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    settings = BreakerSettings(consecutive_failures=1, cool_down=5, jitter=0.1)
    breaker = CircuitBreaker(settings, clock, uniform)
    breaker.failure()
    assert draws == [(pytest.approx(0.9), pytest.approx(1.1))]
    assert breaker.open_remaining() == pytest.approx(5.5)
    unjittered = CircuitBreaker(BreakerSettings(consecutive_failures=1, jitter=0), clock, uniform)
    unjittered.failure()
    assert len(draws) == 1 and unjittered.open_remaining() == pytest.approx(5.0)


def test_quota_cool_down_is_beside_the_circuit() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    assert breaker.allow()  # e.g. the call that then got the out-of-quota answer
    breaker.quota_exhausted(60)
    assert breaker.quota_remaining() == pytest.approx(60)
    assert breaker.state is State.CLOSED and breaker.consecutive_failures == 0
    breaker.quota_exhausted(10)  # a shorter one never cuts a longer one short
    assert breaker.quota_remaining() == pytest.approx(60)
    clock.now += 59
    assert breaker.quota_remaining() == pytest.approx(1)
    clock.now += 1
    assert breaker.quota_remaining() == 0


def test_an_out_of_quota_probe_lets_another_call_probe() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.now += 5
    assert breaker.allow() and not breaker.allow()
    breaker.quota_exhausted(60)
    assert breaker.state is State.HALF_OPEN and breaker.allow()
