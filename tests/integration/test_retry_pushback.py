"""Every refusal with RetryInfo also carries gRFC A6's `grpc-retry-pushback-ms` trailer,
which gRPC clients' own retry policies read: the caller's rate limit, load shedding and
an upstream 429, and a real client retry policy that waits for it."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from llmgateway.v1 import models_pb2, provider_service_pb2_grpc

from tests.support import BASE_CONFIG, Gateway, chat_request, details_of, running_gateway

PUSHBACK = "grpc-retry-pushback-ms"


def pushback_of(error: grpc.aio.AioRpcError) -> list[str]:
    return [v for k, v in error.trailing_metadata() or () if k == PUSHBACK]  # type: ignore[misc]


def assert_pushback_matches_retry_info(error: grpc.aio.AioRpcError, reason: str) -> int:
    details = details_of(error)
    assert details.error_info.reason == reason
    assert details.retry_info is not None, "the refusal carries RetryInfo"
    delay_ns = details.retry_info.retry_delay.ToNanoseconds()
    [pushback] = pushback_of(error)
    assert int(pushback) == -(-delay_ns // 1_000_000), "whole milliseconds, rounded up"
    return int(pushback)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_the_caller_rate_limit_sends_the_pushback() -> None:
    config = BASE_CONFIG + "limits: {subject: {requests_per_minute: 1}}\n"
    async with running_gateway(config) as gateway:
        await gateway.stub.Chat(chat_request(), timeout=5)
        error = await _refused(gateway.stub.Chat(chat_request(), timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # One request a minute: the next one is about a minute away.
        assert assert_pushback_matches_retry_info(error, "CALLER_RATE_LIMITED") > 50_000


async def test_load_shedding_sends_the_pushback() -> None:
    config = BASE_CONFIG.replace(
        "  shutdown_grace: 2s",
        "  shutdown_grace: 2s\n  max_in_flight: 1\n  shed_retry_after: 0.75s",
    )
    async with running_gateway(config) as gateway:
        held = asyncio.ensure_future(
            gateway.stub.Chat(chat_request(), metadata=(("x-mock-stall", "30"),), timeout=60)
        )
        try:
            await _until_in_flight(gateway, 1)
            shed = (("x-request-id", "shed-1"),)
            error = await _refused(gateway.stub.Chat(chat_request(), metadata=shed, timeout=5))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert assert_pushback_matches_retry_info(error, "OVERLOADED") == 750
            # Beside the pushback, the refusal carries the call's request id, once.
            trailing = error.trailing_metadata() or ()
            assert [v for k, v in trailing if k == "x-request-id"] == ["shed-1"]  # type: ignore[misc]
        finally:
            held.cancel()


async def _until_in_flight(gateway: Gateway, count: int) -> None:
    for _ in range(500):
        if gateway.server.snapshot().in_flight == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} calls in flight")


async def test_an_upstream_429_sends_the_pushback() -> None:
    async with running_gateway() as gateway:
        hint = (("x-mock-fail-status", "429"), ("x-mock-retry-after", "2.5"))
        error = await _refused(gateway.stub.Chat(chat_request(), metadata=hint, timeout=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert assert_pushback_matches_retry_info(error, "RATE_LIMITED") == 2500
        streamed = await _refused(_drain(gateway.stub.StreamChat(chat_request(), metadata=hint)))
        assert assert_pushback_matches_retry_info(streamed, "RATE_LIMITED") == 2500


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    async for _ in call:
        pass


async def test_errors_without_retry_info_send_no_pushback() -> None:
    async with running_gateway() as gateway:
        error = await _refused(gateway.stub.Chat(chat_request(model="nope"), timeout=5))
        assert details_of(error).retry_info is None
        assert pushback_of(error) == []


def _retrying_channel(port: int) -> grpc.aio.Channel:
    """A channel whose own retry policy retries RESOURCE_EXHAUSTED almost at once: only
    the server's pushback can make it wait."""
    service_config = {
        "methodConfig": [
            {
                "name": [{"service": "llmgateway.v1.ProviderService"}],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.001s",
                    "maxBackoff": "0.001s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(service_config))],
    )


async def _upstream_requests(gateway: Gateway) -> int:
    stats = await gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5)
    return next(p.requests for p in stats.providers if p.provider == "mock")


async def test_a_grpc_client_retry_policy_waits_for_the_pushback() -> None:
    """An upstream 429 asking for 30 s, on a call with a 2 s deadline: a client retry
    policy that honours the pushback makes no second attempt before the deadline; one that
    did not see it would retry after 1 ms."""
    async with running_gateway() as gateway:
        hint = (("x-mock-fail-status", "429"), ("x-mock-retry-after", "30"))
        async with _retrying_channel(gateway.port) as channel:
            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            error = await _refused(stub.Chat(chat_request(), metadata=hint, timeout=2))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await _upstream_requests(gateway) == 1, "no retry inside the pushback"
        # A short pushback: the same policy does retry, once it has passed.
        short = (("x-mock-fail-status", "429"), ("x-mock-retry-after", "0.05"))
        async with _retrying_channel(gateway.port) as channel:
            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            error = await _refused(stub.Chat(chat_request(), metadata=short, timeout=20))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _upstream_requests(gateway) == 1 + 2, "the policy retried after the wait"
