"""What the gateway refuses to pass on from an upstream, whatever the provider: a
stream larger than the response cap in total (each event small), and an embeddings
answer without one vector per input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from llmgateway.v1 import embed_pb2

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import chunk, sse_body, stream_response
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: up, api_key_env: UP_KEY, base_url: "{url}/v1", max_response_bytes: 2048, openai: {{}}}}
models:
  - {{alias: chat, provider: up, upstream_model: m}}
  - {{alias: embed, provider: up, upstream_model: e, capabilities: {{embeddings: true}}}}
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeHttpServer]:
    def unscripted(request: FakeRequest) -> FakeResponse:
        return FakeResponse.raw(b"unexpected", status=500)

    async with FakeHttpServer(unscripted) as server:
        yield server


@pytest.fixture
async def gateway(upstream: FakeHttpServer) -> AsyncIterator[Gateway]:
    async with running_gateway(CONFIG.format(url=upstream.url), {"UP_KEY": "sk-up"}) as running:
        yield running


async def test_a_stream_over_the_cap_in_total_is_cut_with_a_status(
    upstream: FakeHttpServer, gateway: Gateway
) -> None:
    events: list[dict[str, object] | str] = [chunk("m", {"role": "assistant", "content": ""})]
    events += [chunk("m", {"content": "word "}) for _ in range(40)]  # ~4 KB, each small
    events += [chunk("m", {}, finish="stop"), "[DONE]"]
    upstream.script(stream_response(sse_body(events), piece=256))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in gateway.stub.StreamChat(chat_request("hi", model="chat"), timeout=5):
            received.append(item)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_RESPONSE_TOO_LARGE",
    )
    assert details.error_info.metadata["partialOutput"] == "true"
    assert int(details.error_info.metadata["chunksDelivered"]) == len(received) > 0
    assert not any(item.finish_reason for item in received), "never a clean finish"


async def test_embeddings_need_one_vector_per_input(
    upstream: FakeHttpServer, gateway: Gateway
) -> None:
    one_vector = {
        "object": "list",
        "model": "e",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    upstream.script(FakeResponse.json(one_vector))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Embed(
            embed_pb2.EmbedRequest(model="embed", inputs=["a", "b"]), timeout=5
        )
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )
    assert details.error_info.metadata["detail"] == "1 embeddings for 2 inputs"
    upstream.script(FakeResponse.json({**one_vector}))
    single = await gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="embed", inputs=["a"]), timeout=5
    )
    assert [list(e.values) for e in single.embeddings] == [pytest.approx([0.1, 0.2])]


async def test_shutdown_closes_the_pooled_upstream_connections(upstream: FakeHttpServer) -> None:
    async with running_gateway(CONFIG.format(url=upstream.url), {"UP_KEY": "sk-up"}) as gateway:
        upstream.script(FakeResponse.json(_completion("pooled")))
        reply = await gateway.stub.Chat(chat_request("hi", model="chat"), timeout=5)
        assert reply.message.parts[0].text == "pooled"
        assert upstream.open_connections == 1, "kept alive in the pool after the call"
    # The gateway has stopped: its upstream clients are closed with it.
    assert await upstream.wait_for(lambda: upstream.open_connections == 0)


def _completion(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


async def test_the_pool_limit_caps_connections_to_the_upstream(upstream: FakeHttpServer) -> None:
    config = CONFIG.format(url=upstream.url).replace(
        "max_response_bytes: 2048,",
        # A wait for a free connection as long as the test may take: only the cap is shown.
        "max_response_bytes: 2048, pool: {max_connections: 2, acquire_timeout: 60s},",
    )
    slow = FakeResponse.json(_completion("queued"))
    slow.header_delay = 0.2
    upstream.script(*[slow] * 6)
    async with running_gateway(config, {"UP_KEY": "sk-up"}) as gateway:
        replies = await asyncio.gather(
            *(gateway.stub.Chat(chat_request("hi", model="chat"), timeout=10) for _ in range(6))
        )
    assert [r.message.parts[0].text for r in replies] == ["queued"] * 6
    assert len(upstream.requests) == 6
    assert upstream.most_open_connections == 2, "calls over the pool limit wait for a connection"


POOL_CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{breaker: {{consecutive_failures: 1, cool_down: 60s}}}}
providers:
  - {{name: small, api_key_env: UP_KEY, base_url: "{url}/v1", openai: {{}},
      pool: {{max_connections: 2, acquire_timeout: 0.2s}}}}
  - {{name: spare, api_key_env: UP_KEY, base_url: "{spare}/v1", openai: {{}}}}
models:
  - {{alias: chat, provider: small, upstream_model: m}}
  - alias: spread
    deployments: [{{provider: small, upstream_model: m}}, {{provider: spare, upstream_model: s}}]
"""


class HeldUpstream:
    """Answers every request only once released: the pool stays full for as long as the
    test needs, with no timing involved."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def handle(self, request: FakeRequest) -> FakeResponse:
        await self.release.wait()
        return FakeResponse.json(_completion("held"))


async def _fill_pool(
    gateway: Gateway, upstream: FakeHttpServer, model: str
) -> list[asyncio.Future[Any]]:
    """Two calls that hold both pooled connections until the upstream is released."""
    held: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(gateway.stub.Chat(chat_request("hi", model=model), timeout=30))
        for _ in range(2)
    ]
    assert await upstream.wait_for(lambda: len(upstream.requests) == 2, 10)
    return held


async def test_a_full_pool_refuses_extra_calls_without_opening_the_breaker() -> None:
    held_upstream = HeldUpstream()
    async with (
        FakeHttpServer(held_upstream.handle) as upstream,
        FakeHttpServer(lambda r: FakeResponse.json(_completion("spare"))) as spare,
        running_gateway(
            POOL_CONFIG.format(url=upstream.url, spare=spare.url), {"UP_KEY": "sk-up"}
        ) as gateway,
    ):
        held = await _fill_pool(gateway, upstream, "chat")
        extra = await asyncio.gather(
            *(gateway.stub.Chat(chat_request("hi", model="chat"), timeout=30) for _ in range(3)),
            return_exceptions=True,
        )
        for refused in extra:
            assert isinstance(refused, grpc.aio.AioRpcError), refused
            details = details_of(refused)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "POOL_EXHAUSTED",
            )
            assert details.retry_info is not None
            assert details.retry_info.retry_delay.ToNanoseconds() > 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in gateway.stub.StreamChat(chat_request("hi", model="chat"), timeout=30):
                pass
        assert details_of(caught.value).error_info.reason == "POOL_EXHAUSTED"
        # Nothing beyond the pool reached the upstream, and nothing was retried.
        assert len(upstream.requests) == 2
        assert upstream.most_open_connections == 2
        held_upstream.release.set()
        replies = await asyncio.gather(*held)
        assert [r.message.parts[0].text for r in replies] == ["held", "held"]
        # One counted failure would have opened this breaker: the next call is served.
        reply = await gateway.stub.Chat(chat_request("hi", model="chat"), timeout=30)
        assert reply.message.parts[0].text == "held"
        assert len(spare.requests) == 0


async def test_a_full_pool_sends_extra_calls_to_the_next_deployment() -> None:
    held_upstream = HeldUpstream()
    async with (
        FakeHttpServer(held_upstream.handle) as upstream,
        FakeHttpServer(lambda r: FakeResponse.json(_completion("spare"))) as spare,
        running_gateway(
            POOL_CONFIG.format(url=upstream.url, spare=spare.url), {"UP_KEY": "sk-up"}
        ) as gateway,
    ):
        held = await _fill_pool(gateway, upstream, "chat")
        extra = await asyncio.gather(
            *(gateway.stub.Chat(chat_request("hi", model="spread"), timeout=30) for _ in range(3))
        )
        assert [r.message.parts[0].text for r in extra] == ["spare"] * 3
        assert len(spare.requests) == 3
        assert len(upstream.requests) == 2
        held_upstream.release.set()
        await asyncio.gather(*held)
        # The full pool was not the deployment's fault: the same deployment serves again.
        reply = await gateway.stub.Chat(chat_request("hi", model="chat"), timeout=30)
        assert reply.message.parts[0].text == "held"


async def test_idle_connections_beyond_the_keepalive_cap_are_closed() -> None:
    held_upstream = HeldUpstream()
    config = POOL_CONFIG.replace(
        "pool: {{max_connections: 2, acquire_timeout: 0.2s}}",
        "pool: {{max_connections: 3, max_keepalive_connections: 1}}",
    )
    async with (
        FakeHttpServer(held_upstream.handle) as upstream,
        FakeHttpServer(lambda r: FakeResponse.json(_completion("spare"))) as spare,
        running_gateway(
            config.format(url=upstream.url, spare=spare.url), {"UP_KEY": "sk-up"}
        ) as gateway,
    ):
        calls = [
            asyncio.ensure_future(gateway.stub.Chat(chat_request("hi", model="chat"), timeout=30))
            for _ in range(3)
        ]
        assert await upstream.wait_for(lambda: upstream.open_connections == 3, 10)
        held_upstream.release.set()
        await asyncio.gather(*calls)
        # Three connections were open at once; one is kept for the next call.
        assert await upstream.wait_for(lambda: upstream.open_connections == 1, 10)
        await gateway.stub.Chat(chat_request("hi", model="chat"), timeout=30)
        assert upstream.connections_accepted == 3
