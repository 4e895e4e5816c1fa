"""The providers' own rate limits, through the running gateway against fake upstreams
that enforce them: the gateway reserves before each request, spills a call to the next
deployment (then to the fallbacks) when one has no room, refuses with
UPSTREAM_RATE_LIMITED_LOCALLY when none has, reconciles tokens with the reported usage,
and stops when a provider's headers say it is out, all without an upstream 429.

In-process gateways hold their quota clock still (nothing refills during a test), so
that every count is exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from llmgateway.v1 import chat_pb2, models_pb2

from service.config import ConfigError, parse_config
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.fakes.rate_limits import FakeQuota
from tests.support import Gateway, chat_request, details_of, refusing_port, running_gateway

REASON = "UPSTREAM_RATE_LIMITED_LOCALLY"
PUSHBACK = "grpc-retry-pushback-ms"
FROZEN = 1000.0

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}}}
providers:
  - {{name: east, api_key_env: RL_KEY, base_url: "{east}/v1", openai: {{}}}}
  - {{name: west, api_key_env: RL_KEY, base_url: "{west}/v1", openai: {{}}}}
  - {{name: spare, mock: {{}}}}
models:
  - alias: pooled
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    rate_limit: {{requests_per_minute: {rpm}}}
    deployments:
      - {{provider: east, upstream_model: gpt-4o}}
      - {{provider: west, upstream_model: gpt-4o}}
  - alias: unlimited
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    deployments:
      - {{provider: east, upstream_model: gpt-4o-mini}}
      - {{provider: west, upstream_model: gpt-4o-mini}}
  - alias: skewed
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    deployments:
      - {{provider: east, upstream_model: gpt-4o-skew, rate_limit: {{requests_per_minute: 1}}}}
      - {{provider: west, upstream_model: gpt-4o-skew, rate_limit: {{requests_per_minute: 10}}}}
  - alias: primary
    provider: east
    upstream_model: gpt-4.1
    rate_limit: {{requests_per_minute: 1}}
    fallbacks: [backup]
  - alias: counted
    provider: west
    upstream_model: gpt-4.1-mini
    rate_limit: {{tokens_per_minute: 250}}
  - {{alias: backup, provider: spare}}
"""


@dataclass
class Fleet:
    gateway: Gateway
    east: OpenAIFake
    west: OpenAIFake
    east_server: FakeHttpServer
    west_server: FakeHttpServer


def quota(send_headers: bool = False, requests: int = 10) -> FakeQuota:
    return FakeQuota(requests=requests, send_headers=send_headers)


@contextlib.asynccontextmanager
async def fleet(
    east: FakeQuota | None = None, west: FakeQuota | None = None, rpm: int = 10
) -> AsyncIterator[Fleet]:
    east_fake = OpenAIFake(OpenAIFakeConfig(quota=east))
    west_fake = OpenAIFake(OpenAIFakeConfig(quota=west))
    async with (
        FakeHttpServer(east_fake.handle) as east_server,
        FakeHttpServer(west_fake.handle) as west_server,
    ):
        config = CONFIG.format(east=east_server.url, west=west_server.url, rpm=rpm)
        async with running_gateway(config, environ={"RL_KEY": "sk-test"}) as gateway:
            gateway.server.router.quotas.clock = lambda: FROZEN
            yield Fleet(gateway, east_fake, west_fake, east_server, west_server)


async def call_many(
    gateway: Gateway, count: int, model: str = "pooled"
) -> tuple[list[chat_pb2.ChatResponse], list[grpc.aio.AioRpcError]]:
    """`count` calls at once; the answers and the refusals."""
    results = await asyncio.gather(
        *(gateway.stub.Chat(chat_request("hi", model=model), timeout=30) for _ in range(count)),
        return_exceptions=True,
    )
    served = [r for r in results if isinstance(r, chat_pb2.ChatResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(served) + len(refused) == count, results
    return served, refused


def assert_held_back(error: grpc.aio.AioRpcError, wait: float | None = None) -> float:
    """The refusal of a call that no deployment had room for; its RetryInfo delay."""
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, REASON)
    assert details.retry_info is not None
    delay = details.retry_info.retry_delay.ToNanoseconds() / 1e9
    if wait is not None:
        assert delay == pytest.approx(wait)
    pushback = [v for k, v in error.trailing_metadata() or () if k == PUSHBACK]
    assert pushback == [str(-(-round(delay * 1e9) // 1_000_000))]
    assert details.quota_failure is not None
    return delay


async def deployment_stats(
    gateway: Gateway, provider: str
) -> dict[str, models_pb2.DeploymentStats]:
    stats = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(provider=provider), timeout=5
    )
    return {d.upstream_model: d for d in stats.providers[0].deployments}


async def test_two_deployments_of_ten_a_minute_serve_twenty_of_thirty_calls() -> None:
    async with fleet(quota(), quota()) as f:
        served, refused = await call_many(f.gateway, 30)
        assert len(served) == 20 and len(refused) == 10
        assert (f.east.config.quota.used_requests, f.west.config.quota.used_requests) == (10, 10)  # type: ignore[union-attr]
        assert f.east.config.quota.refused == f.west.config.quota.refused == 0, "no upstream 429"  # type: ignore[union-attr]
        for error in refused:
            # Each bucket is empty: one more request in 60 s / 10.
            assert_held_back(error, wait=6.0)
            assert details_of(error).error_info.metadata["deployments"] == "2"
        assert {r.route.provider for r in served} == {"east", "west"}
        east = (await deployment_stats(f.gateway, "east"))["gpt-4o"]
        room = east.rate_limit_headroom
        assert (room.requests_per_minute, room.requests_remaining) == (10, 0.0)
        assert not room.HasField("tokens_remaining"), "no token limit is configured"
        assert not room.available
        assert room.available_in.ToNanoseconds() == 6_000_000_000
        assert east.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED, "no breaker verdict"
        assert east.consecutive_failures == 0


async def test_a_deployment_without_room_is_skipped_for_the_next_one() -> None:
    async with fleet(quota(), quota()) as f:
        served = [
            await f.gateway.stub.Chat(chat_request("hi", model="skewed"), timeout=10)
            for _ in range(6)
        ]
        # Round robin would alternate; east has room for one request a minute.
        assert [r.route.provider for r in served] == ["east"] + ["west"] * 5
        assert all(not r.route.fallback_used and r.route.attempts == 1 for r in served)
        assert len(f.east_server.requests) == 1, "no request to a deployment without room"


async def test_the_fallback_takes_over_when_the_primary_has_no_room() -> None:
    async with fleet(quota(requests=1), quota()) as f:
        first = await f.gateway.stub.Chat(chat_request("hi", model="primary"), timeout=10)
        assert (first.route.provider, first.route.fallback_used) == ("east", False)
        for _ in range(3):
            reply = await f.gateway.stub.Chat(chat_request("hi", model="primary"), timeout=10)
            assert (reply.route.provider, reply.route.fallback_used) == ("spare", True)
            assert reply.route.attempts == 1, "the skipped deployment made no attempt"
        assert len(f.east_server.requests) == 1
        assert f.east.config.quota.refused == 0  # type: ignore[union-attr]


async def test_tokens_are_reserved_then_reconciled_with_the_reported_usage() -> None:
    # Each call is estimated at 5 input + 100 output tokens and the fake reports 2 used
    # ("x" in, "x" out). Two estimates in flight fit in 250; a third does not.
    config = chat_pb2.GenerationConfig(max_output_tokens=100)
    release = asyncio.Event()
    west = OpenAIFake(OpenAIFakeConfig())

    async def stalled(request: FakeRequest) -> FakeResponse:
        await release.wait()
        return west.handle(request)

    async with fleet() as f:
        f.west_server.handler = stalled
        calls = [
            asyncio.ensure_future(
                f.gateway.stub.Chat(
                    chat_request("x", model="counted", generation_config=config), timeout=30
                )
            )
            for _ in range(2)
        ]
        assert await f.west_server.wait_for(lambda: len(f.west_server.requests) == 2, 30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await f.gateway.stub.Chat(
                chat_request("x", model="counted", generation_config=config), timeout=10
            )
        assert_held_back(caught.value)
        details = details_of(caught.value)
        assert details.error_info.metadata["limit"] == "tokens_per_minute"
        assert details.quota_failure is not None
        violation = details.quota_failure.violations[0]
        assert violation.subject == "deployment:west/gpt-4.1-mini"
        assert violation.description == "250 tokens per minute"
        release.set()
        for call in calls:
            assert (await call).usage.total_tokens == 2
        room = (await deployment_stats(f.gateway, "west"))["gpt-4.1-mini"].rate_limit_headroom
        assert room.tokens_remaining == 246.0, "each call now holds only the 2 it used"
        # A stream is reconciled from its final usage chunk too.
        chunks = [
            chunk
            async for chunk in f.gateway.stub.StreamChat(
                chat_request("x", model="counted", generation_config=config), timeout=10
            )
        ]
        assert chunks[-1].usage.total_tokens == 2
        room = (await deployment_stats(f.gateway, "west"))["gpt-4.1-mini"].rate_limit_headroom
        assert room.tokens_remaining == 244.0
        assert len(f.west_server.requests) == 3


async def test_a_request_that_never_reached_the_provider_gives_its_reservation_back() -> None:
    with refusing_port() as port:
        config = f"""
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: gone, api_key_env: RL_KEY, base_url: "http://127.0.0.1:{port}/v1", openai: {{}},
      rate_limit: {{requests_per_minute: 1}}}}
models:
  - {{alias: gone, provider: gone, upstream_model: gpt-4o}}
"""
        async with running_gateway(config, environ={"RL_KEY": "sk-test"}) as gateway:
            gateway.server.router.quotas.clock = lambda: FROZEN
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await gateway.stub.Chat(chat_request("hi", model="gone"), timeout=10)
                assert details_of(caught.value).error_info.reason == "UPSTREAM_CONNECT_FAILED"
            room = (await deployment_stats(gateway, "gone"))["gpt-4o"].rate_limit_headroom
            assert (room.requests_per_minute, room.requests_remaining) == (1, 1.0)
            assert room.available


async def test_openai_headers_saying_none_remain_send_calls_to_the_other_deployment() -> None:
    # No configured limit on "unlimited": only east's own headers stop the gateway.
    async with fleet(FakeQuota(requests=1), FakeQuota(requests=100)) as f:
        served = [
            (await f.gateway.stub.Chat(chat_request("hi", model="unlimited"), timeout=10))
            for _ in range(5)
        ]
        assert [r.route.provider for r in served] == ["east"] + ["west"] * 4
        assert len(f.east_server.requests) == 1, "no request to a deployment reported empty"
        assert f.east.config.quota.refused == 0  # type: ignore[union-attr]
        east = (await deployment_stats(f.gateway, "east"))["gpt-4o-mini"]
        room = east.rate_limit_headroom
        assert not room.available
        assert room.requests_per_minute == 0, "nothing configured"
        reported = {r.kind: r for r in room.reported}
        assert reported["requests"].remaining == 0
        assert 0 < reported["requests"].reset_in.ToNanoseconds() <= 60_000_000_000
        west = (await deployment_stats(f.gateway, "west"))["gpt-4o-mini"]
        assert {r.kind: r.remaining for r in west.rate_limit_headroom.reported} == {"requests": 96}
        assert west.rate_limit_headroom.available


async def test_anthropic_headers_saying_none_remain_hold_calls_back_until_the_reset() -> None:
    async with AnthropicFake(quota=FakeQuota(requests=2, tokens=100_000)) as fake:
        config = f"""
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}}}
providers:
  - {{name: claude, api_key_env: RL_KEY, base_url: "{fake.url}/v1", anthropic: {{}}}}
models:
  - {{alias: claude, provider: claude, upstream_model: claude-sonnet-4-5}}
"""
        async with running_gateway(config, environ={"RL_KEY": fake.api_key}) as gateway:
            for _ in range(2):
                await gateway.stub.Chat(chat_request("hi", model="claude"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request("hi", model="claude"), timeout=10)
            delay = assert_held_back(caught.value)
            assert 0 < delay <= 61, "until the reset the provider reported"
            assert details_of(caught.value).error_info.metadata["limit"] == "provider_reported"
            assert len(fake.requests) == 2 and fake.quota.refused == 0  # type: ignore[union-attr]
            stats = await deployment_stats(gateway, "claude")
            reported = {
                r.kind: r.remaining for r in stats["claude-sonnet-4-5"].rate_limit_headroom.reported
            }
            assert reported["requests"] == 0
            assert set(reported) == {"requests", "tokens", "input_tokens", "output_tokens"}


def test_one_deployment_has_one_quota_whichever_aliases_use_it() -> None:
    config = """
auth: {disabled: true}
providers:
  - {name: p, mock: {}, rate_limit: {requests_per_minute: 5}}
models:
  - {alias: a, provider: p, upstream_model: m}
  - {alias: b, provider: p, upstream_model: m, rate_limit: {requests_per_minute: 6}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(config, {})
    assert caught.value.path == "models[1].rate_limit"
    assert "p/m already has another rate limit (models[0])" in caught.value.problem


async def test_a_provider_429_that_says_none_remain_keeps_calls_away_until_its_reset() -> None:
    async with fleet() as f:
        f.east_server.script(
            FakeResponse.json(
                {
                    "error": {
                        "message": "slow down",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
                429,
                {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"},
            )
        )
        first = await f.gateway.stub.Chat(chat_request("hi", model="unlimited"), timeout=10)
        assert (first.route.provider, first.route.attempts) == ("west", 2), "east's 429 failed over"
        for _ in range(4):
            reply = await f.gateway.stub.Chat(chat_request("hi", model="unlimited"), timeout=10)
            assert reply.route.provider == "west"
        assert len(f.east_server.requests) == 1
        room = (await deployment_stats(f.gateway, "east"))["gpt-4o-mini"].rate_limit_headroom
        assert room.available_in.ToNanoseconds() == 30_000_000_000
