"""The mock provider's faults, driven by request metadata and by configuration, map
through the same upstream-error table as real providers."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.support import BASE_CONFIG, Gateway, chat_request, details_of, running_gateway


@pytest.mark.parametrize(
    ("status", "code", "reason", "retry_info"),
    [
        ("429", grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
        ("500", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL", True),
        ("503", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True),
        ("529", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED", True),
        ("400", grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", False),
        ("401", grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH_FAILED", False),
        ("404", grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", False),
    ],
)
async def test_fail_status_maps_to_a_precise_code(
    gateway: Gateway, status: str, code: grpc.StatusCode, reason: str, retry_info: bool
) -> None:
    metadata = (("x-mock-fail-status", status), ("x-mock-retry-after", "1.5"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request(), metadata=metadata, timeout=5)
    details = details_of(caught.value)
    assert details.code == code
    assert details.error_info.reason == reason
    assert details.error_info.metadata["provider"] == "mock"
    assert details.error_info.metadata["model"] == "mock-echo-1"
    assert details.error_info.metadata["upstreamStatus"] == status
    if retry_info:
        assert details.retry_info is not None
        assert details.retry_info.retry_delay.ToMilliseconds() == 1500
    else:
        assert details.retry_info is None, "no wait hint for errors that cannot succeed"


async def test_stream_fails_after_n_chunks_with_partial_output(gateway: Gateway) -> None:
    metadata = (("x-mock-fail-status", "503"), ("x-mock-after-chunks", "2"))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in gateway.stub.StreamChat(
            chat_request("one two three four"), metadata=metadata, timeout=5
        ):
            received.append(chunk.text_delta)
    assert received == ["one", " two"]
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info.metadata["partialOutput"] == "true"
    assert details.error_info.metadata["chunksDelivered"] == "2"


async def test_stall_runs_into_the_deadline(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # 2.5 s: the gateway ends the call 0.25 s before the caller's own timer would,
        # room enough on a loaded machine for its status to arrive first.
        await gateway.stub.Chat(chat_request(), metadata=(("x-mock-stall", "30"),), timeout=2.5)
    details = details_of(caught.value)  # the gateway's own status, with its details
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
    )


async def test_stream_stall_after_chunks_then_continues(gateway: Gateway) -> None:
    metadata = (("x-mock-stall", "0.2"), ("x-mock-after-chunks", "1"))
    chunks = [
        c async for c in gateway.stub.StreamChat(chat_request("a b"), metadata=metadata, timeout=5)
    ]
    assert "".join(c.text_delta for c in chunks) == "a b"


async def test_target_limits_faults_to_one_provider(gateway: Gateway) -> None:
    metadata = (("x-mock-fail-status", "500"), ("x-mock-target", "scripted"))
    response = await gateway.stub.Chat(chat_request(), metadata=metadata, timeout=5)
    assert response.message.parts[0].text == "Hello there"
    aimed = (("x-mock-fail-status", "500"), ("x-mock-target", "mock"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request(), metadata=aimed, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_invalid_fault_metadata_is_invalid_argument(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(
            chat_request(), metadata=(("x-mock-fail-status", "abc"),), timeout=5
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.x-mock-fail-status" in details.violations


async def test_configured_fault_and_metadata_ignored_when_not_allowed() -> None:
    config = BASE_CONFIG.replace(
        '      script: ["First scripted reply.", "Second scripted reply."]',
        '      script: ["ok"]\n      fault: {http_status: 503, retry_after: 2s}',
    )
    async with running_gateway(config) as gateway:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request(model="scripted"), timeout=5)
        details = details_of(caught.value)
        assert details.error_info.reason == "UPSTREAM_UNAVAILABLE"
        assert details.retry_info is not None and details.retry_info.retry_delay.seconds == 2
        # The scripted provider does not take faults from metadata: this one stays clean.
        response = await gateway.stub.Chat(
            chat_request(model="mock"), metadata=(("x-mock-target", "mock"),), timeout=5
        )
        assert response.finish_reason != 0
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(provider="scripted"), timeout=5
        )
        assert stats.providers[0].failures == 1


async def test_cancelled_stream_is_counted_as_cancelled() -> None:
    async with running_gateway(BASE_CONFIG) as gateway:
        call = gateway.stub.StreamChat(
            chat_request("a b c"),
            metadata=(("x-mock-stall", "30"), ("x-mock-after-chunks", "1")),
            timeout=10,
        )
        first = await call.read()
        assert first.text_delta == "a"
        call.cancel()
        for _ in range(100):
            stats = await gateway.stub.GetProviderStats(
                models_pb2.GetProviderStatsRequest(provider="mock"), timeout=5
            )
            if stats.providers[0].cancelled:
                break
            await asyncio.sleep(0.02)
        assert stats.providers[0].cancelled == 1
        assert stats.providers[0].failures == 0
