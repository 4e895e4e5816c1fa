"""Rate limits and spend budgets per subject and tenant, with fake clocks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.auth.identity import ANONYMOUS, Identity
from service.errors import DOMAIN, GatewayError, to_status_proto
from service.limits import (
    BUDGET_EXCEEDED,
    CALLER_RATE_LIMITED,
    InMemoryLimitStore,
    Limiter,
    Reservation,
    buckets,
    budgets,
    estimate,
    estimate_tokens,
)
from service.limits import store as store_module
from service.limits.buckets import BucketState, Decision, Rate

ALICE = Identity(subject="alice")
ALICE_ACME = Identity(subject="alice", tenant="acme")
BOB_ACME = Identity(subject="bob", tenant="acme")
BOB = Identity(subject="bob")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def limit(
    rpm: int = 0, tpm: int = 0, budget: float = 0.0, period: int = 0
) -> config_pb2.LimitConfig:
    return config_pb2.LimitConfig(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        budget_usd=budget,
        budget_period=period,  # type: ignore[arg-type]
    )


def make_limiter(
    subject: config_pb2.LimitConfig | None = None,
    tenant: config_pb2.LimitConfig | None = None,
    subjects: dict[str, config_pb2.LimitConfig] | None = None,
    tenants: dict[str, config_pb2.LimitConfig] | None = None,
    *,
    clock: Clock | None = None,
    wall: Clock | None = None,
    store: InMemoryLimitStore | None = None,
) -> Limiter:
    config = config_pb2.LimitsConfig()
    if subject is not None:
        config.subject.CopyFrom(subject)
    if tenant is not None:
        config.tenant.CopyFrom(tenant)
    for name, value in (subjects or {}).items():
        config.subjects[name].CopyFrom(value)
    for name, value in (tenants or {}).items():
        config.tenants[name].CopyFrom(value)
    return Limiter.from_config(
        config,
        clock=clock or Clock(),
        wall_clock=wall or Clock(utc(2025, 6, 15, 12)),
        store=store,
    )


async def refused(limiter: Limiter, identity: Identity, tokens: int = 1) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await limiter.admit(identity, tokens)
    return caught.value


def usage(total: int = 0, cost: float | None = None) -> route_pb2.Usage:
    result = route_pb2.Usage(total_tokens=total)
    if cost is not None:
        result.cost_usd = cost
    return result


class Details:
    """The real google.rpc.Status of an error, checked to carry exactly one ErrorInfo,
    one RetryInfo and one QuotaFailure with one violation, and nothing else."""

    def __init__(self, error: GatewayError) -> None:
        self.status: status_pb2.Status = to_status_proto(error)
        kinds = (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        )
        names = []
        for detail in self.status.details:
            known = [cls.__name__ for cls in kinds if detail.Is(cls.DESCRIPTOR)]
            names.append(known[0] if known else detail.type_url)
        assert sorted(names) == ["ErrorInfo", "QuotaFailure", "RetryInfo"], names
        self.info = error_details_pb2.ErrorInfo()
        self.retry = error_details_pb2.RetryInfo()
        self.quota = error_details_pb2.QuotaFailure()
        for detail in self.status.details:
            for target in (self.info, self.retry, self.quota):
                if detail.Is(target.DESCRIPTOR):
                    detail.Unpack(target)
        assert self.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert self.info.domain == DOMAIN
        assert len(self.quota.violations) == 1

    @property
    def reason(self) -> str:
        return str(self.info.reason)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.metadata)

    @property
    def retry_seconds(self) -> float:
        return float(self.retry.retry_delay.ToNanoseconds()) / 1e9

    @property
    def violation(self) -> tuple[str, str]:
        only = self.quota.violations[0]
        return only.subject, only.description


# Requests per minute


async def test_exactly_n_requests_pass_then_the_next_is_refused_with_retry_info() -> None:
    limiter = make_limiter(subject=limit(rpm=5))
    for _ in range(5):
        await limiter.admit(ALICE, 1)
    error = await refused(limiter, ALICE)
    details = Details(error)
    assert details.reason == CALLER_RATE_LIMITED
    assert details.retry_seconds == pytest.approx(12.0)  # one request every 60/5 s
    assert details.metadata == {"subject": "alice", "limit": "requests_per_minute"}
    assert details.violation == ("subject:alice", "5 requests per minute")
    assert details.status.message == 'subject "alice" is over its limit of 5 requests per minute'
    assert error.retryable is False and error.failover is False


async def test_requests_refill_over_time_up_to_the_burst() -> None:
    clock = Clock()
    limiter = make_limiter(subject=limit(rpm=6), clock=clock)
    for _ in range(6):
        await limiter.admit(ALICE, 1)
    clock.now += 9.5
    assert Details(await refused(limiter, ALICE)).retry_seconds == pytest.approx(0.5)
    clock.now += 0.5
    await limiter.admit(ALICE, 1)  # one more every 10 s
    assert Details(await refused(limiter, ALICE)).retry_seconds == pytest.approx(10.0)
    clock.now += 3600  # a long pause refills to the burst, not beyond
    for _ in range(6):
        await limiter.admit(ALICE, 1)
    await refused(limiter, ALICE)


async def test_concurrent_admissions_never_let_more_than_the_limit_through() -> None:
    limiter = make_limiter(subject=limit(rpm=7))
    results = await asyncio.gather(
        *(limiter.admit(ALICE, 1) for _ in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, Reservation) for r in results) == 7
    assert sum(isinstance(r, GatewayError) for r in results) == 13


# Tokens per minute


async def test_tokens_estimate_is_charged_and_a_smaller_usage_gives_the_rest_back() -> None:
    clock = Clock()
    limiter = make_limiter(subject=limit(tpm=600), clock=clock)  # 10 tokens a second
    first = await limiter.admit(ALICE, 400)
    error = await refused(limiter, ALICE, 300)  # 200 left, 100 short
    details = Details(error)
    assert details.reason == CALLER_RATE_LIMITED
    assert details.retry_seconds == pytest.approx(10.0)
    assert details.metadata["limit"] == "tokens_per_minute"
    assert details.violation == (
        "subject:alice",
        "600 tokens per minute; this call is estimated at 300",
    )
    await first.settle(usage(total=100))  # 300 given back: 500 left
    await limiter.admit(ALICE, 500)
    assert Details(await refused(limiter, ALICE, 1)).retry_seconds == pytest.approx(0.1)


async def test_a_larger_usage_goes_into_debt_that_delays_the_next_call() -> None:
    clock = Clock()
    limiter = make_limiter(subject=limit(tpm=600), clock=clock)
    reservation = await limiter.admit(ALICE, 100)
    await reservation.settle(usage(total=1100))  # 1000 more than estimated: level -500
    error = await refused(limiter, ALICE, 100)
    assert Details(error).retry_seconds == pytest.approx(60.0)  # (100 + 500) / 10 per s
    clock.now += 59.9
    await refused(limiter, ALICE, 100)
    clock.now += 0.1
    await limiter.admit(ALICE, 100)


async def test_a_call_above_the_whole_allowance_waits_for_a_full_bucket() -> None:
    clock = Clock()
    limiter = make_limiter(subject=limit(tpm=60), clock=clock)  # 1 token a second
    await limiter.admit(ALICE, 150)  # fits a full bucket, leaves a debt of 90
    error = await refused(limiter, ALICE, 150)
    assert Details(error).retry_seconds == pytest.approx(150.0)  # from -90 back to full
    clock.now += 150
    await limiter.admit(ALICE, 150)


async def test_settle_without_usage_keeps_the_estimate_charged() -> None:
    limiter = make_limiter(subject=limit(tpm=100))
    reservation = await limiter.admit(ALICE, 60)
    await reservation.settle(None)
    assert reservation.settled
    await refused(limiter, ALICE, 60)  # 40 left: nothing was given back
    unknown = await limiter.admit(ALICE, 30)
    await unknown.settle(usage(total=0, cost=0.5))  # no token count: the same as None
    await refused(limiter, ALICE, 11)
    await limiter.admit(ALICE, 10)


async def test_settle_twice_does_not_count_twice() -> None:
    wall = Clock(utc(2025, 6, 15))
    limiter = make_limiter(subject=limit(tpm=100, budget=2.0), wall=wall)
    first = await limiter.admit(ALICE, 50)
    await limiter.admit(ALICE, 40)  # 10 left
    for _ in range(2):
        await first.settle(usage(total=10, cost=1.0))  # 40 back once: 50 left, $1 spent
    await limiter.admit(ALICE, 50)
    await refused(limiter, ALICE, 1)  # 0 left; twice would have left 40
    await limiter.admit(BOB, 1)  # another subject has its own bucket
    second = await limiter.admit(BOB, 0)
    await second.settle(usage(cost=1.0))
    await second.settle(usage(cost=1.0))
    await limiter.admit(BOB, 0)  # $1 of $2; twice would be $2 and refused
    third = await limiter.admit(BOB, 0)
    await third.settle(usage(cost=1.0))
    assert Details(await refused(limiter, BOB, 0)).reason == BUDGET_EXCEEDED


# Budgets


async def test_budget_reached_exactly_refuses_and_just_below_admits() -> None:
    wall = Clock(utc(2025, 6, 15, 12))
    limiter = make_limiter(subject=limit(budget=10.0), wall=wall)
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=9.999999999))  # one nano-dollar below
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=0.000000001))
    error = await refused(limiter, ALICE)
    details = Details(error)
    assert details.reason == BUDGET_EXCEEDED
    assert details.metadata == {"subject": "alice", "limit": "budget_usd"}
    assert details.violation == (
        "subject:alice",
        "spent $10.00 of the $10.00 budget for the UTC month 2025-06",
    )
    assert details.status.message == 'subject "alice" has spent its monthly budget of $10.00'
    assert details.retry_seconds == pytest.approx(utc(2025, 7, 1) - wall.now)


async def test_budget_sums_are_exact() -> None:
    limiter = make_limiter(subject=limit(budget=1.0))
    for _ in range(10):
        reservation = await limiter.admit(ALICE, 1)
        await reservation.settle(usage(cost=0.1))  # 0.1 ten times is 0.9999999999999999 in floats
    assert Details(await refused(limiter, ALICE)).reason == BUDGET_EXCEEDED


async def test_daily_budget_renews_at_utc_midnight() -> None:
    wall = Clock(utc(2025, 6, 30, 23, 59, 59) + 0.5)
    limiter = make_limiter(
        subject=limit(budget=1.0, period=config_pb2.BUDGET_PERIOD_DAY), wall=wall
    )
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=1.5))
    details = Details(await refused(limiter, ALICE))
    assert details.retry_seconds == pytest.approx(0.5)
    assert details.violation == (
        "subject:alice",
        "spent $1.50 of the $1.00 budget for the UTC day 2025-06-30",
    )
    assert details.status.message == 'subject "alice" has spent its daily budget of $1.00'
    wall.now = utc(2025, 7, 1)
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=0.25))  # goes to the new day
    await limiter.admit(ALICE, 1)
    wall.now = utc(2025, 7, 1, 23, 59, 59)
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=0.75))
    await refused(limiter, ALICE)


@pytest.mark.parametrize(
    ("now", "renews"),
    [
        (utc(2025, 6, 30, 23, 59, 59), utc(2025, 7, 1)),  # a 30-day month
        (utc(2024, 2, 29, 12), utc(2024, 3, 1)),  # leap February
        (utc(2025, 12, 31, 23), utc(2026, 1, 1)),  # the year ends
        (utc(2025, 1, 1), utc(2025, 2, 1)),  # the first instant of a month
    ],
)
async def test_monthly_budget_renews_at_the_end_of_the_utc_month(now: float, renews: float) -> None:
    wall = Clock(now)
    limiter = make_limiter(subject=limit(budget=1.0), wall=wall)  # unspecified period: month
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=1.0))
    assert Details(await refused(limiter, ALICE)).retry_seconds == pytest.approx(renews - now)
    wall.now = renews - 0.001
    await refused(limiter, ALICE)
    wall.now = renews
    await limiter.admit(ALICE, 1)


def test_period_windows() -> None:
    day = budgets.window(budgets.Period.DAY, utc(2024, 2, 29, 13, 30))
    assert (day.key, day.start, day.end) == ("2024-02-29", utc(2024, 2, 29), utc(2024, 3, 1))
    assert day.remaining(utc(2024, 2, 29, 23)) == 3600
    assert day.remaining(utc(2024, 3, 2)) == 0
    month = budgets.window(budgets.Period.MONTH, utc(2025, 12, 31, 23, 59, 59))
    assert (month.key, month.start, month.end) == ("2025-12", utc(2025, 12, 1), utc(2026, 1, 1))
    assert budgets.Period.from_config(config_pb2.BUDGET_PERIOD_UNSPECIFIED) is budgets.Period.MONTH
    assert budgets.Period.from_config(config_pb2.BUDGET_PERIOD_DAY) is budgets.Period.DAY
    assert budgets.format_usd(2_500_000) == "$0.0025"
    assert budgets.format_usd(12_340_000_000) == "$12.34"
    assert [budgets.budget_nanos(v) for v in (0.0, -1.0, float("nan"), float("inf"), 1e-12)] == [
        None,
        None,
        None,
        None,
        1,
    ]
    assert [budgets.to_nanos(v) for v in (0.5, 1.001, -0.5, float("nan"))] == [
        500_000_000,
        1_001_000_000,  # rounded, not truncated (1.001 x 1e9 is 1000999999.99...)
        0,
        0,
    ]


async def test_usage_without_cost_adds_nothing_to_the_budget() -> None:
    limiter = make_limiter(subject=limit(budget=1.0))
    for _ in range(3):
        reservation = await limiter.admit(ALICE, 1)
        await reservation.settle(usage(total=10))
    reservation = await limiter.admit(ALICE, 1)
    await reservation.settle(usage(cost=0.0))
    await limiter.admit(ALICE, 1)


# Subject and tenant


async def test_the_subject_is_checked_before_the_tenant() -> None:
    limiter = make_limiter(subject=limit(rpm=1), tenant=limit(rpm=1))
    await limiter.admit(ALICE_ACME, 1)
    details = Details(await refused(limiter, ALICE_ACME))
    assert details.violation[0] == "subject:alice"
    assert details.metadata == {
        "subject": "alice",
        "tenant": "acme",
        "limit": "requests_per_minute",
    }


async def test_a_tenant_refusal_gives_back_what_the_subject_took() -> None:
    limiter = make_limiter(subject=limit(rpm=2, tpm=1000), tenant=limit(rpm=1))
    await limiter.admit(ALICE_ACME, 500)
    details = Details(await refused(limiter, BOB_ACME, 500))
    assert details.violation == ("tenant:acme", "1 request per minute")
    assert details.metadata == {"subject": "bob", "tenant": "acme", "limit": "requests_per_minute"}
    assert details.status.message == 'tenant "acme" is over its limit of 1 request per minute'
    # Bob's own buckets are untouched: two calls of 500 tokens still fit.
    await limiter.admit(BOB, 500)
    await limiter.admit(BOB, 500)
    await refused(limiter, BOB, 1)


async def test_a_tokens_refusal_gives_back_everything_taken_before_it() -> None:
    limiter = make_limiter(subject=limit(rpm=2, tpm=1000), tenant=limit(tpm=100))
    await limiter.admit(BOB_ACME, 50)  # acme has 50 tokens left
    details = Details(await refused(limiter, ALICE_ACME, 60))
    assert details.violation == (
        "tenant:acme",
        "100 tokens per minute; this call is estimated at 60",
    )
    # Alice's request and 60 tokens were given back: two calls of 1000 and 0 fit.
    await limiter.admit(ALICE, 1000)
    await limiter.admit(ALICE, 0)
    # The subject's own tokens refusal gives back its request.
    carol = Identity(subject="carol")
    await limiter.admit(carol, 600)
    assert Details(await refused(limiter, carol, 500)).metadata["limit"] == "tokens_per_minute"
    await limiter.admit(carol, 400)  # the second request is still there


async def test_the_budget_is_checked_before_the_rates_and_consumes_nothing() -> None:
    limiter = make_limiter(subject=limit(rpm=2, budget=1.0), tenant=limit(rpm=1))
    reservation = await limiter.admit(ALICE_ACME, 1)
    await reservation.settle(usage(cost=1.0))  # alice's budget is spent, acme used its call
    details = Details(await refused(limiter, ALICE_ACME))
    assert (details.reason, details.violation[0]) == (BUDGET_EXCEEDED, "subject:alice")
    await limiter.admit(BOB, 1)  # no tenant: only the subject limits apply
    assert Details(await refused(limiter, BOB_ACME)).violation[0] == "tenant:acme"


async def test_the_tenant_budget_counts_every_subject_of_the_tenant() -> None:
    limiter = make_limiter(tenant=limit(budget=1.0))
    reservation = await limiter.admit(ALICE_ACME, 1)
    await reservation.settle(usage(cost=0.6))
    reservation = await limiter.admit(BOB_ACME, 1)
    await reservation.settle(usage(cost=0.4))
    details = Details(await refused(limiter, ALICE_ACME))
    assert details.reason == BUDGET_EXCEEDED
    assert details.violation == (
        "tenant:acme",
        "spent $1.00 of the $1.00 budget for the UTC month 2025-06",
    )
    assert details.metadata == {"subject": "alice", "tenant": "acme", "limit": "budget_usd"}
    await limiter.admit(ALICE, 1)  # without the tenant, alice has no limit


async def test_an_override_replaces_the_default_as_a_whole() -> None:
    limiter = make_limiter(
        subject=limit(rpm=1, tpm=100),
        tenant=limit(rpm=1),
        subjects={"vip": limit(rpm=3)},
        tenants={"free": limit()},
    )
    vip = Identity(subject="vip")
    for _ in range(3):
        await limiter.admit(vip, 10_000)  # no tokens limit: the default's is replaced
    assert Details(await refused(limiter, vip)).violation == (
        "subject:vip",
        "3 requests per minute",
    )
    await limiter.admit(ALICE, 100)
    await refused(limiter, ALICE)
    carol = Identity(subject="carol", tenant="free")
    dave = Identity(subject="dave", tenant="free")
    await limiter.admit(carol, 1)
    await limiter.admit(dave, 1)  # tenant "free" has no limit, unlike the default
    assert limiter.limits_for("tenant", "free").any is False
    assert limiter.limits_for("tenant", "acme").requests_per_minute == 1


async def test_anonymous_callers_are_limited_as_the_subject_anonymous() -> None:
    limiter = make_limiter(subject=limit(rpm=5), subjects={"anonymous": limit(rpm=1)})
    await limiter.admit(ANONYMOUS, 1)
    details = Details(await refused(limiter, ANONYMOUS))
    assert details.violation[0] == "subject:anonymous"
    assert details.metadata == {"subject": "anonymous", "limit": "requests_per_minute"}
    stranger = Identity(subject="mallory", authenticated=False)
    await refused(limiter, stranger)  # unauthenticated: the same "anonymous" bucket


# Enabled or not


async def test_a_limiter_without_limits_admits_everything_and_keeps_no_state() -> None:
    store = InMemoryLimitStore()
    limiter = make_limiter(subjects={"alice": limit()}, tenants={"acme": limit()}, store=store)
    assert limiter.enabled is False
    for _ in range(1000):
        reservation = await limiter.admit(ALICE_ACME, 10**9)
        await reservation.settle(usage(total=10**9, cost=1e6))
    assert len(store) == 0


@pytest.mark.parametrize(
    "config",
    [
        config_pb2.LimitsConfig(subject=limit(rpm=1)),
        config_pb2.LimitsConfig(tenant=limit(tpm=1)),
        config_pb2.LimitsConfig(subjects={"x": limit(budget=0.01)}),
        config_pb2.LimitsConfig(tenants={"x": limit(rpm=1)}),
    ],
)
def test_any_one_limit_enables_the_limiter(config: config_pb2.LimitsConfig) -> None:
    assert Limiter.from_config(config).enabled is True


# Store


class FailingStore(InMemoryLimitStore):
    """Fails on the tenant's bucket, as a shared store might on a lost connection."""

    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        if key.endswith("tenant:|acme"):
            raise ConnectionError("store unavailable")
        return await super().take(key, amount, rate, now)


async def test_a_store_failure_gives_back_what_was_taken() -> None:
    store = FailingStore()
    limiter = make_limiter(subject=limit(rpm=1), tenant=limit(rpm=1), store=store)
    with pytest.raises(ConnectionError):
        await limiter.admit(ALICE_ACME, 1)
    await limiter.admit(ALICE, 1)  # the subject's one request was given back


async def test_the_memory_store_forgets_full_buckets_and_expired_spends() -> None:
    clock = Clock()
    store = InMemoryLimitStore(clock)
    rate = Rate.per_minute(60)
    assert await store.take("a", 30, rate, clock.now) == Decision(allowed=True)
    assert await store.add_spend("s", 5, ttl=10) == 5
    assert await store.add_spend("s", 7, ttl=1) == 12  # the longer expiry stays
    assert len(store) == 2
    clock.now += 5
    assert await store.spent("s") == 12
    clock.now += 5
    assert await store.spent("s") == 0
    store.sweep(clock.now)
    assert len(store) == 1  # the bucket is not full yet: 30 + 10 s x 1/s
    clock.now += 20
    store.sweep(clock.now)
    assert len(store) == 0


async def test_the_memory_store_sweeps_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SWEEP_EVERY", 3)
    clock = Clock()
    store = InMemoryLimitStore(clock)
    rate = Rate.per_minute(60)
    await store.take("a", 1, rate, clock.now)
    await store.take("b", 1, rate, clock.now)
    assert len(store) == 2
    clock.now += 1  # both full again
    await store.take("c", 1, rate, clock.now)  # the third operation sweeps, then takes
    assert len(store) == 1


# Buckets, pure


def test_bucket_take_adjust_and_refill() -> None:
    rate = Rate.per_minute(60)  # 1 a second, burst 60
    state, decision = buckets.take(None, 60, rate, 0.0)
    assert decision.allowed and state == BucketState(level=0.0, updated=0.0)
    state, decision = buckets.take(state, 1, rate, 0.5)
    assert not decision.allowed and decision.retry_after == pytest.approx(0.5)
    assert state == BucketState(level=0.5, updated=0.5)  # a refusal only refills
    state = buckets.adjust(state, 10.5, rate, 0.5)
    assert state.level == -10.0  # debt
    state = buckets.adjust(state, -1000, rate, 0.5)
    assert state.level == 60.0  # never above the burst
    assert buckets.refill(state, rate, 0.0) == state  # a clock going back refills nothing
    assert buckets.is_full(state, rate, 0.5)


def test_seven_per_minute_refills_exactly_despite_float_rounding() -> None:
    rate = Rate.per_minute(7)
    state: BucketState | None = None
    for _ in range(7):
        state, decision = buckets.take(state, 1, rate, 0.0)
        assert decision.allowed
    now = 0.0
    for _ in range(70):
        now += 60 / 7
        state, decision = buckets.take(state, 1, rate, now)
        assert decision.allowed, now


# Estimates


def _chat(
    *parts: content_pb2.Part,
    max_output_tokens: int | None = None,
    reasoning_budget_tokens: int | None = None,
) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="m",
        messages=[content_pb2.Message(role=content_pb2.ROLE_USER, parts=list(parts))],
        generation_config=chat_pb2.GenerationConfig(
            max_output_tokens=max_output_tokens, reasoning_budget_tokens=reasoning_budget_tokens
        ),
    )


def test_estimate_counts_text_bytes_over_four_plus_output() -> None:
    base = estimate.MESSAGE_OVERHEAD + estimate.DEFAULT_OUTPUT_TOKENS
    assert estimate_tokens(_chat(content_pb2.Part(text="abcd" * 10))) == base + 10
    assert estimate_tokens(_chat(content_pb2.Part(text="abcde"))) == base + 2  # rounded up
    assert estimate_tokens(_chat(content_pb2.Part(text="日本語"))) == base + 3  # 9 bytes
    assert estimate_tokens(_chat(content_pb2.Part(text="abcd"), max_output_tokens=10)) == (
        estimate.MESSAGE_OVERHEAD + 1 + 10
    )
    assert estimate_tokens(_chat(content_pb2.Part(text="abcd"), reasoning_budget_tokens=1000)) == (
        base + 1 + 1000
    )
    image = content_pb2.Part(image=content_pb2.Image(url="https://x/y.png"))
    assert estimate_tokens(_chat(image)) == base + estimate.IMAGE_TOKENS
    assert estimate_tokens(chat_pb2.ChatRequest()) == estimate.DEFAULT_OUTPUT_TOKENS


def test_estimate_counts_tools_and_tool_traffic() -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"city": {"type": "string"}}})
    request = _chat(content_pb2.Part(text="abcd"))
    plain = estimate_tokens(request)
    request.tools.add(name="weather", description="Gets the weather", parameters=parameters)
    schema_json = json_format.MessageToJson(parameters, indent=None)
    expected_tool = (
        estimate.text_tokens("weather")
        + estimate.text_tokens("Gets the weather")
        + estimate.text_tokens(schema_json)
    )
    assert estimate.text_tokens(schema_json) > 5
    assert estimate_tokens(request) == plain + expected_tool
    call = content_pb2.Part(
        tool_call=content_pb2.ToolCall(id="1", name="weather", arguments='{"city": "Paris"}')
    )
    result = content_pb2.Part(
        tool_result=content_pb2.ToolResult(tool_call_id="1", content="sunny, 21 C")
    )
    with_traffic = _chat(content_pb2.Part(text="abcd"), call, result)
    assert estimate_tokens(with_traffic) == plain + 2 + 5 + 3


def test_estimate_for_embeddings_is_the_inputs_and_never_zero() -> None:
    assert estimate_tokens(embed_pb2.EmbedRequest(model="e", inputs=["abcd", "abcdefgh"])) == 3
    assert estimate_tokens(embed_pb2.EmbedRequest(model="e", inputs=["a"])) == 1
    assert estimate_tokens(embed_pb2.EmbedRequest(model="e")) == 1


# --- subjects and tenants are those of one issuer ---------------------------------------


async def test_the_same_names_from_two_issuers_have_their_own_buckets_and_budgets() -> None:
    wall = Clock(utc(2025, 6, 15, 12))
    limiter = make_limiter(
        subject=limit(rpm=1),
        tenant=limit(budget=1.0, period=config_pb2.BUDGET_PERIOD_DAY),
        wall=wall,
    )
    internal = Identity(subject="alice", tenant="acme", issuer="internal")
    corporate = Identity(subject="alice", tenant="acme", issuer="https://corp.example/")
    reservation = await limiter.admit(internal, 1)
    await reservation.settle(usage(total=2, cost=1.0))  # acme of internal spends its budget
    assert (await refused(limiter, internal)).reason == "CALLER_RATE_LIMITED"
    bob = Identity(subject="bob", tenant="acme", issuer="internal")
    assert (await refused(limiter, bob)).reason == "BUDGET_EXCEEDED"
    await limiter.admit(corporate, 1)  # alice of corp: her own bucket, acme its own budget
    assert (await refused(limiter, corporate)).reason == "CALLER_RATE_LIMITED"


async def test_names_with_separators_never_meet_another_issuers_keys() -> None:
    limiter = make_limiter(subject=limit(rpm=1))
    await limiter.admit(Identity(subject="b", issuer="a|"), 1)
    await limiter.admit(Identity(subject="|b", issuer="a"), 1)
    await limiter.admit(Identity(subject="b", issuer="a%7C"), 1)
    assert (await refused(limiter, Identity(subject="b", issuer="a|"))).reason == (
        "CALLER_RATE_LIMITED"
    )


def test_an_issuers_own_override_wins_over_the_bare_name() -> None:
    config = config_pb2.LimitsConfig()
    config.subject.requests_per_minute = 5
    config.subjects["alice"].requests_per_minute = 10
    config.issuers["internal"].subjects["alice"].requests_per_minute = 100
    config.issuers["internal"].tenants["acme"].tokens_per_minute = 7
    limiter = Limiter.from_config(config)
    assert limiter.limits_for("subject", "alice", "internal").requests_per_minute == 100
    assert limiter.limits_for("subject", "alice", "other").requests_per_minute == 10
    assert limiter.limits_for("subject", "bob", "internal").requests_per_minute == 5
    assert limiter.limits_for("tenant", "acme", "internal").tokens_per_minute == 7
    assert not limiter.limits_for("tenant", "acme", "other").any
