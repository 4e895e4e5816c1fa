"""Rate limits and budgets through the running gateway, at their edges: refused calls get
RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure before any upstream call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from llmgateway.v1 import chat_pb2, models_pb2

from tests.fakes.keys import HS_SECRET, claims, sign
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
auth:
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
limits:
{limits}
providers:
  - {{name: mock, mock: {{faults_from_metadata: true}}}}
models:
  - alias: mock
    provider: mock
    pricing: {{input_per_million: 100000, output_per_million: 100000}}
"""


def bearer(sub: str = "alice", **extra: Any) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", "Bearer " + sign(claims("dev", sub=sub, **extra), HS_SECRET, "HS256")),
    )


async def gateway_with(limits: str) -> AsyncIterator[Gateway]:
    async with running_gateway(
        CONFIG.format(limits=limits), environ={"GW_SECRET": HS_SECRET}
    ) as gateway:
        yield gateway


async def refused_of_stalled_calls(
    gateways: list[Gateway], config: chat_pb2.GenerationConfig
) -> list[grpc.aio.AioRpcError]:
    """One call to each gateway at once; the errors of those refused. An admitted call
    stalls upstream, holding its token estimate, until every call was either admitted
    (its upstream request started) or refused; then the test cancels it."""
    distinct = list({id(gateway): gateway for gateway in gateways}.values())

    async def started() -> int:
        return sum([await upstream_requests(gateway) for gateway in distinct])

    before = await started()
    stall = (("x-mock-stall", "60"),)
    calls = [
        gateway.stub.Chat(
            chat_request("x", generation_config=config),
            metadata=(*bearer(), *stall),
            timeout=60,
        )
        for gateway in gateways
    ]
    try:
        for _ in range(500):  # bounded: 500 polls
            refused = sum(call.done() for call in calls)
            if refused + await started() - before == len(calls):
                break
            await asyncio.sleep(0.01)
        errors = []
        for call in calls:
            if call.done():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                errors.append(caught.value)
        assert refused + await started() - before == len(calls), "every call admitted or refused"
        return errors
    finally:
        for call in calls:
            call.cancel()


async def upstream_requests(gateway: Gateway) -> int:
    stats = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(), metadata=bearer("ops"), timeout=5
    )
    return stats.providers[0].requests


async def test_requests_per_minute_per_subject() -> None:
    async for gateway in gateway_with("  subjects: {alice: {requests_per_minute: 3}}"):
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):
            await gateway.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
        elapsed = loop.time() - started
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CALLER_RATE_LIMITED",
        )
        assert details.error_info.metadata["subject"] == "alice"
        assert details.error_info.metadata["limit"] == "requests_per_minute"
        # One request refills in 20 s, less what refilled since the first call.
        assert details.retry_info is not None
        delay = details.retry_info.retry_delay.ToNanoseconds() / 1e9
        assert 20 - elapsed - 0.01 <= delay <= 20
        assert (
            details.quota_failure is not None
            and details.quota_failure.violations[0].subject == "subject:alice"
        )
        assert await upstream_requests(gateway) == 3, "the refused call never reached the provider"
        # Another subject has its own allowance; streams are limited the same way.
        await gateway.stub.Chat(chat_request("hi"), metadata=bearer("bob"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in gateway.stub.StreamChat(
                chat_request("hi"), metadata=bearer(), timeout=5
            ):
                pass
        assert details_of(streamed.value).error_info.reason == "CALLER_RATE_LIMITED"


async def test_tenant_limit_is_shared_by_its_subjects() -> None:
    async for gateway in gateway_with("  tenant: {requests_per_minute: 2}"):
        await gateway.stub.Chat(chat_request(), metadata=bearer("a1", tenant="acme"), timeout=5)
        await gateway.stub.Chat(chat_request(), metadata=bearer("a2", tenant="acme"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request(), metadata=bearer("a3", tenant="acme"), timeout=5)
        details = details_of(caught.value)
        assert details.error_info.metadata["tenant"] == "acme"
        assert (
            details.quota_failure is not None
            and details.quota_failure.violations[0].subject == "tenant:acme"
        )
        await gateway.stub.Chat(chat_request(), metadata=bearer("z1", tenant="zeta"), timeout=5)


async def test_tokens_per_minute_charge_an_estimate_and_reconcile() -> None:
    # Each call is estimated at about 106 tokens (max_output_tokens 100) and really uses 2.
    config = chat_pb2.GenerationConfig(max_output_tokens=100)
    async for gateway in gateway_with("  subject: {tokens_per_minute: 250}"):
        for i in range(6):
            reply = await gateway.stub.Chat(
                chat_request("x", generation_config=config), metadata=bearer(), timeout=5
            )
            assert reply.usage.total_tokens == 2, i
        # Held estimates are only given back when calls end: concurrent calls hit the limit.
        refused = await refused_of_stalled_calls([gateway] * 3, config)
        assert len(refused) == 1
        details = details_of(refused[0])
        assert details.error_info.metadata["limit"] == "tokens_per_minute"
        assert (
            details.retry_info is not None and details.retry_info.retry_delay.ToMilliseconds() > 0
        )


async def test_budget_exhausted_at_its_edge() -> None:
    # "a b" costs 4 tokens x $0.10 = $0.40: two calls leave $0.20, the third is admitted
    # ($0.80 < $1.00) and overshoots, the fourth is refused.
    async for gateway in gateway_with(
        "  subject: {budget_usd: 1.0, budget_period: BUDGET_PERIOD_DAY}"
    ):
        for _ in range(3):
            reply = await gateway.stub.Chat(chat_request("a b"), metadata=bearer(), timeout=5)
            assert reply.usage.cost_usd == pytest.approx(0.4)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("a b"), metadata=bearer(), timeout=5)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
        )
        assert (
            details.retry_info is not None and 0 < details.retry_info.retry_delay.seconds <= 86400
        )
        assert (
            details.quota_failure is not None
            and "$1.00" in details.quota_failure.violations[0].description
        )
        assert await upstream_requests(gateway) == 3
        await gateway.stub.Chat(chat_request("a b"), metadata=bearer("bob"), timeout=5)


async def test_streams_settle_their_real_usage() -> None:
    async for gateway in gateway_with("  subject: {budget_usd: 1.0}"):
        chunks = [
            c
            async for c in gateway.stub.StreamChat(
                chat_request("a b c d e"), metadata=bearer(), timeout=5
            )
        ]
        assert chunks[-1].usage.cost_usd == pytest.approx(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("a"), metadata=bearer(), timeout=5)
        assert details_of(caught.value).error_info.reason == "BUDGET_EXCEEDED"


async def test_invalid_requests_do_not_consume_limits() -> None:
    async for gateway in gateway_with("  subject: {requests_per_minute: 1}"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(
                chat_pb2.ChatRequest(model="mock"), metadata=bearer(), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = await gateway.stub.Chat(chat_request("ok"), metadata=bearer(), timeout=5)
        assert reply.message.parts[0].text == "ok"
