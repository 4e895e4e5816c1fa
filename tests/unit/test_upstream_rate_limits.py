"""The providers' rate limits, without sockets: every header format the providers send,
the arithmetic of needs, reports and reservations, which configured limit applies, and
the refusal when no deployment has room."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2

from service.errors import GatewayError
from service.limits.buckets import Decision, Rate
from service.limits.estimate import DEFAULT_OUTPUT_TOKENS
from service.limits.limiter import StoreFailures
from service.limits.store import InMemoryLimitStore, LimitStoreError
from service.providers.base import Capabilities, Deployment, RateQuota
from service.providers.rate_limit_headers import ReportedLimit, reported_limits
from service.providers.retry_hints import go_duration_seconds, rfc3339_seconds
from service.routing.headroom import (
    Need,
    Window,
    configured_quota,
    need_of,
    reported_wait,
    taken,
    with_report,
)
from service.routing.quotas import UPSTREAM_RATE_LIMITED, UpstreamQuotas, never_sent
from service.routing.refusals import exhausted
from tests.support import chat_request

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


# Header formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("59.123s", 59.123),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("250µs", 0.00025),
        ("250us", 0.00025),
        ("800ns", 8e-7),
        (" 12ms ", 0.012),
    ],
)
def test_go_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert go_duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "-1s", "1x", "s", "1s2", "1 s", "1.s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    assert go_duration_seconds(text) is None


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("2026-01-01T00:01:00Z", NOW + 60),
        ("2026-01-01T02:01:00+02:00", NOW + 60),
        ("2026-01-01T00:00:30.5Z", NOW + 30.5),
        ("2026-01-01T00:01:00", NOW + 60),  # no offset: UTC
    ],
)
def test_rfc3339_times_read_as_unix_time(text: str, unix: float) -> None:
    assert rfc3339_seconds(text) == pytest.approx(unix)


def test_rfc3339_rejects_what_is_not_a_time() -> None:
    assert rfc3339_seconds("in a minute") is None
    assert rfc3339_seconds("") is None


def test_openai_headers_report_requests_and_tokens() -> None:
    headers = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-ratelimit-remaining-tokens_usage_based": "1",
        "x-ratelimit-reset-tokens_usage_based": "9ms",
    }
    assert reported_limits(headers, NOW) == (
        ReportedLimit("requests", 4999, 0.012),
        ReportedLimit("tokens", 159976, 360.0),
    )


def test_azure_reports_requests_alone_and_a_value_that_does_not_parse_is_left_out() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "lots",
        "x-ratelimit-reset-tokens": "1s",
    }
    assert reported_limits(headers, NOW) == (ReportedLimit("requests", 0, 1.0),)


def test_a_remaining_without_its_reset_is_not_used() -> None:
    assert reported_limits({"x-ratelimit-remaining-requests": "0"}, NOW) == ()
    assert reported_limits({"anthropic-ratelimit-tokens-remaining": "0"}, NOW) == ()


def test_anthropic_headers_report_four_limits_with_absolute_resets() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "999",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        "anthropic-ratelimit-tokens-remaining": "96000",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:01:00Z",
        "anthropic-ratelimit-input-tokens-remaining": "80000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:30.5Z",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2025-12-31T23:59:00Z",  # already past
    }
    assert reported_limits(headers, NOW) == (
        ReportedLimit("requests", 999, 1.0),
        ReportedLimit("tokens", 96000, 60.0),
        ReportedLimit("input_tokens", 80000, 30.5),
        ReportedLimit("output_tokens", 0, 0.0),
    )


def test_responses_without_rate_limit_headers_report_nothing() -> None:
    assert reported_limits({"content-type": "application/json"}, NOW) == ()


# Needs and reports --------------------------------------------------------------------


def test_a_chat_needs_its_input_estimate_and_its_output_allowance() -> None:
    plain = chat_request("abcdefgh")  # 8 bytes = 2 tokens, plus 4 for the message
    assert need_of(plain) == Need(6, DEFAULT_OUTPUT_TOKENS)
    capped = chat_request(
        "abcdefgh", generation_config=chat_pb2.GenerationConfig(max_output_tokens=50)
    )
    assert need_of(capped) == Need(6, 50)
    assert need_of(capped).tokens == 56
    assert need_of(embed_pb2.EmbedRequest(model="e", inputs=["abcd", "efgh"])) == Need(2, 0)


def test_each_kind_of_limit_takes_its_part_of_the_need() -> None:
    need = Need(6, 50)
    assert [need.of(k) for k in ("requests", "tokens", "input_tokens", "output_tokens")] == [
        1,
        56,
        6,
        50,
    ]


def test_a_report_holds_until_its_reset_and_calls_sent_meanwhile_are_taken_from_it() -> None:
    view = with_report({}, [ReportedLimit("requests", 2, 10.0)], 100.0)
    assert view == {"requests": Window(2.0, 110.0)}
    need = Need(1, 1)
    assert reported_wait(view, need, 100.0) == 0
    view = taken(view, need, 100.0)
    view = taken(view, need, 101.0)
    assert view == {"requests": Window(0.0, 110.0)}
    assert reported_wait(view, need, 104.0) == 6.0
    assert reported_wait(view, need, 110.0) == 0, "the report no longer holds"
    assert taken(view, need, 110.0) == {}


def test_tokens_wait_for_the_reset_when_less_remains_than_the_call_needs() -> None:
    view = with_report(
        {}, [ReportedLimit("tokens", 100, 20.0), ReportedLimit("output_tokens", 500, 5.0)], 0.0
    )
    assert reported_wait(view, Need(10, 80), 0.0) == 0
    assert reported_wait(view, Need(30, 80), 0.0) == 20.0
    assert reported_wait(view, Need(1, 600), 0.0) == 20.0, "the longer of the two waits"


def test_a_newer_report_replaces_the_kinds_it_reports_and_a_past_reset_clears_one() -> None:
    view = with_report(
        {}, [ReportedLimit("requests", 0, 30.0), ReportedLimit("tokens", 5, 30.0)], 0.0
    )
    view = with_report(view, [ReportedLimit("requests", 7, 10.0)], 1.0)
    assert view == {"requests": Window(7.0, 11.0), "tokens": Window(5.0, 30.0)}
    assert with_report(view, [ReportedLimit("tokens", 0, 0.0)], 2.0) == {
        "requests": Window(7.0, 11.0)
    }


# Which configured limit applies --------------------------------------------------------


def _limit(rpm: int = 0, tpm: int = 0) -> config_pb2.UpstreamRateLimitConfig:
    return config_pb2.UpstreamRateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm)


def test_the_most_specific_rate_limit_applies_as_a_whole() -> None:
    provider = config_pb2.ProviderConfig(name="p", rate_limit=_limit(rpm=100, tpm=1000))
    model = config_pb2.ModelConfig(alias="a", rate_limit=_limit(rpm=10))
    target = config_pb2.DeploymentTarget(provider="p", rate_limit=_limit(tpm=5))
    assert configured_quota(provider, config_pb2.ModelConfig()) == RateQuota(100, 1000)
    assert configured_quota(provider, model) == RateQuota(10, 0)
    assert configured_quota(provider, model, target) == RateQuota(0, 5)
    unlimited = config_pb2.DeploymentTarget(provider="p", rate_limit=_limit())
    assert configured_quota(provider, model, unlimited) is None, "an empty one lifts the limit"
    assert configured_quota(config_pb2.ProviderConfig(name="p"), config_pb2.ModelConfig()) is None


# Reservations -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def deployment(rpm: int = 0, tpm: int = 0, model: str = "m") -> Deployment:
    quota = RateQuota(rpm, tpm) if rpm or tpm else None
    return Deployment("alias", "p", "openai", model, Capabilities(), rate_limit=quota)


def quotas(clock: Clock, **kwargs: object) -> UpstreamQuotas:
    return UpstreamQuotas(clock=clock, wall_clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


async def refusal(quotas: UpstreamQuotas, d: Deployment, need: Need) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await quotas.reserve(d, need)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, UPSTREAM_RATE_LIMITED)
    assert (error.failover, error.retryable, error.upstream_fault) == (True, False, False)
    return error


async def test_requests_per_minute_are_reserved_until_none_is_left() -> None:
    clock = Clock()
    q = quotas(clock)
    d = deployment(rpm=2)
    for _ in range(2):
        await q.reserve(d, Need(1, 1))
    assert q.has_headroom(d), "nothing refused yet"
    error = await refusal(q, d, Need(1, 1))
    assert error.retry_after == pytest.approx(30.0)
    assert error.metadata == {"provider": "p", "model": "m", "limit": "requests_per_minute"}
    assert [v.description for v in error.quota_violations] == ["2 requests per minute"]
    assert not q.has_headroom(d)
    clock.now += 30
    assert q.has_headroom(d)
    await q.reserve(d, Need(1, 1))


async def test_tokens_are_reconciled_with_the_usage_both_ways() -> None:
    clock = Clock()
    q = quotas(clock)
    d = deployment(tpm=100)
    hold = await q.reserve(d, Need(10, 50))
    assert (await q.headroom(d)).tokens_remaining == 40
    await hold.settle(route_pb2.Usage(input_tokens=8, output_tokens=4, total_tokens=12))
    assert (await q.headroom(d)).tokens_remaining == 88, "the unused 48 came back"
    await hold.settle(route_pb2.Usage(total_tokens=1000))
    assert (await q.headroom(d)).tokens_remaining == 88, "settled once"
    hold = await q.reserve(d, Need(10, 50))
    await hold.settle(route_pb2.Usage(input_tokens=10, output_tokens=120))
    room = await q.headroom(d)
    assert room.tokens_remaining == -42, "a call that used more leaves debt"
    assert room.available_in == pytest.approx(43 / (100 / 60))
    error = await refusal(q, d, Need(1, 1))
    assert error.metadata["limit"] == "tokens_per_minute"


async def test_usage_unknown_keeps_the_estimate_and_release_gives_everything_back() -> None:
    clock = Clock()
    q = quotas(clock)
    d = deployment(rpm=1, tpm=100)
    hold = await q.reserve(d, Need(10, 50))
    await hold.settle(None)
    room = await q.headroom(d)
    assert (room.requests_remaining, room.tokens_remaining) == (0, 40)
    clock.now += 60
    hold = await q.reserve(d, Need(10, 50))
    await hold.release()
    await hold.release()
    room = await q.headroom(d)
    assert (room.requests_remaining, room.tokens_remaining) == (1, 100)


async def test_a_refused_token_reservation_gives_the_request_back() -> None:
    q = quotas(Clock())
    d = deployment(rpm=5, tpm=100)
    await q.reserve(d, Need(10, 10))
    error = await refusal(q, d, Need(100, 0))
    assert error.metadata["limit"] == "tokens_per_minute"
    room = await q.headroom(d)
    assert (room.requests_remaining, room.tokens_remaining) == (4, 80)


async def test_a_provider_report_refuses_before_the_quota_and_without_one() -> None:
    clock = Clock()
    q = quotas(clock)
    d = deployment()  # nothing configured
    assert not q.applies(d)
    q.observe(d, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "20s"})
    assert q.applies(d)
    await q.reserve(d, Need(1, 1))
    error = await refusal(q, d, Need(1, 1))
    assert error.retry_after == pytest.approx(20.0)
    assert error.metadata["limit"] == "provider_reported"
    assert [v.description for v in error.quota_violations] == ["the provider's reported rate limit"]
    room = await q.headroom(d)
    assert (room.available, room.requests_remaining) == (False, None)
    assert room.reported["requests"].remaining == 0
    assert [x.key for x in q.watched()] == ["p/m"]
    clock.now += 20
    assert q.has_headroom(d)
    await q.reserve(d, Need(1, 1))


class BrokenStore(InMemoryLimitStore):
    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        raise LimitStoreError("the limit store failed (ConnectionError)")


@pytest.mark.parametrize("deny", [False, True])
async def test_a_store_outage_lets_requests_through_or_refuses_them_and_counts(
    deny: bool,
) -> None:
    failures = StoreFailures(deny=deny)
    q = quotas(Clock(), store=BrokenStore(), failures=failures)
    d = deployment(rpm=1)
    if deny:
        with pytest.raises(GatewayError) as caught:
            await q.reserve(d, Need(1, 1))
        error = caught.value
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "LIMITS_UNAVAILABLE")
        assert (error.failover, error.upstream_fault) == (True, False)
    else:
        for _ in range(3):
            await q.reserve(d, Need(1, 1))
    assert failures.count == (1 if deny else 3)


@pytest.mark.parametrize(
    ("reason", "detail", "expected"),
    [
        ("UPSTREAM_CONNECT_FAILED", "ConnectError", True),
        ("POOL_EXHAUSTED", "", True),
        ("UPSTREAM_TIMEOUT", "ConnectTimeout", True),
        ("UPSTREAM_TIMEOUT", "ReadTimeout", False),
        ("UPSTREAM_CONNECTION_LOST", "ReadError", False),
        ("RATE_LIMITED", "", False),
    ],
)
def test_only_requests_that_never_left_give_their_reservation_back(
    reason: str, detail: str, expected: bool
) -> None:
    error = GatewayError(grpc.StatusCode.UNAVAILABLE, reason, "x", metadata={"detail": detail})
    assert never_sent(error) is expected


def test_no_deployment_with_room_is_one_refusal_with_the_earliest_wait() -> None:
    from service.routing.quotas import upstream_rate_limited

    errors = [
        upstream_rate_limited(deployment(rpm=1, model="a"), "requests_per_minute", 12.0),
        upstream_rate_limited(deployment(rpm=1, model="b"), "requests_per_minute", 4.0),
    ]
    error = exhausted(errors)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, UPSTREAM_RATE_LIMITED)
    assert error.retry_after == 4.0
    assert error.upstream_fault is False
    assert [v.subject for v in error.quota_violations] == ["deployment:p/a", "deployment:p/b"]


def test_deployments_carry_their_quota_and_direct_addressing_shares_it() -> None:
    from service.config import parse_config
    from service.providers.registry import Registry

    config = """
auth: {disabled: true}
allow_direct_model_addressing: true
providers:
  - {name: p, mock: {}, rate_limit: {requests_per_minute: 100}}
  - {name: q, mock: {}}
models:
  - alias: pooled
    rate_limit: {tokens_per_minute: 5000}
    deployments:
      - {provider: p, upstream_model: m1}
      - {provider: q, upstream_model: m2, rate_limit: {requests_per_minute: 7}}
  - {alias: plain, provider: p, upstream_model: m3}
"""
    registry = Registry.from_config(parse_config(config, {}).config, {})
    quotas = {d.key: d.rate_limit for d in registry.every_deployment()}
    assert quotas == {
        "p/m1": RateQuota(0, 5000),
        "q/m2": RateQuota(7, 0),
        "p/m3": RateQuota(100, 0),
    }
    assert registry.resolve("p/m1").rate_limit == RateQuota(0, 5000), "the same deployment"
    assert registry.resolve("p/other").rate_limit == RateQuota(100, 0), "the provider's"
    assert registry.resolve("q/other").rate_limit is None
