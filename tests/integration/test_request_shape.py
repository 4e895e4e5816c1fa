"""A caller's request shape must not shut a model for everyone: an OpenAI-compatible
server that answers an over-long prompt with an empty 200 stream (llama.cpp) is tried
at most twice and never opens the breaker, and a prompt longer than an alias's
configured context window is refused (or sent to its context fallback) before anything
goes upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.fakes.http_server import FakeHttpServer, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, chunk, sse_body
from tests.support import Gateway, chat_request, details_of, running_gateway

# A breaker that opens after two failures in a row, and three attempts per deployment:
# before, two empty streams (three attempts each) opened it.
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing:
  retry:
    max_attempts: 3
    initial_backoff: 0.01s
    max_backoff: 0.02s
    budget: {{ratio: 1.0, min_retries_per_second: 1000}}
  breaker: {{consecutive_failures: 2, minimum_calls: 1000, cool_down: 60s}}
providers:
  - {{name: llama, base_url: "{llama}/v1", openai_compatible: {{auth_scheme: AUTH_SCHEME_NONE}}}}
  - {{name: big, base_url: "{big}/v1", openai_compatible: {{auth_scheme: AUTH_SCHEME_NONE}}}}
models:
  - {{alias: local, provider: llama, upstream_model: m-local}}
  - {{alias: small, provider: llama, upstream_model: m-small, context_window: 1000}}
  - {{alias: roomy, provider: llama, upstream_model: m-roomy, context_window: 1000,
      context_fallbacks: [large]}}
  - {{alias: large, provider: big, upstream_model: m-large, context_window: 100000}}
"""

# 1,000 words of 5 bytes: about 1,250 tokens by the gateway's estimate.
LONG = "word " * 1000

EMPTY_STREAMS = {
    "nothing": b"",
    "done-only": b"data: [DONE]\n\n",
    "role-then-done": sse_body([chunk("m-local", {"role": "assistant", "content": ""}), "[DONE]"]),
}


@dataclass
class World:
    gateway: Gateway
    llama: FakeHttpServer
    big: FakeHttpServer

    def llama_calls(self, model: str) -> int:
        return sum(1 for r in self.llama.requests if r.json().get("model") == model)


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    fake = OpenAIFake(OpenAIFakeConfig(auth="none"))
    async with FakeHttpServer(fake.handle) as llama, FakeHttpServer(fake.handle) as big:
        config = CONFIG.format(llama=llama.url, big=big.url)
        async with running_gateway(config) as gateway:
            yield World(gateway, llama, big)


async def deployment_stats(gateway: Gateway, model: str) -> models_pb2.DeploymentStats:
    reply = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(provider="llama"), timeout=5
    )
    found = [d for d in reply.providers[0].deployments if d.upstream_model == model]
    assert len(found) == 1, f"no breaker for {model}"
    return found[0]


@pytest.mark.parametrize("body", EMPTY_STREAMS.values(), ids=EMPTY_STREAMS.keys())
async def test_empty_streams_are_tried_twice_and_never_open_the_breaker(body: bytes) -> None:
    async with world() as w:
        calls = 4
        w.llama.script(*(FakeResponse.stream([body]) for _ in range(2 * calls)))
        for number in range(1, calls + 1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in w.gateway.stub.StreamChat(
                    chat_request("too long for the server", model="local"), timeout=10
                ):
                    pass
            details = details_of(caught.value)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "UPSTREAM_EMPTY_STREAM",
            )
            assert details.error_info.metadata["attempts"] == "2"
            assert w.llama_calls("m-local") == 2 * number, "at most two attempts per call"
        deployment = await deployment_stats(w.gateway, "m-local")
        assert deployment.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED
        assert (deployment.times_opened, deployment.consecutive_failures) == (0, 0)
        # The next caller, with a request the server can take, is served.
        chunks = [
            c
            async for c in w.gateway.stub.StreamChat(chat_request("a b", model="local"), timeout=10)
        ]
        assert "".join(c.text_delta for c in chunks) == "a b"
        assert chunks[0].route.attempts == 1
        reply = await w.gateway.stub.Chat(chat_request("c d", model="local"), timeout=10)
        assert reply.message.parts[0].text == "c d"


async def test_a_stream_cut_after_its_output_began_is_still_truncated() -> None:
    async with world() as w:
        cut = sse_body([chunk("m-local", {"content": "Hel"})])  # no finish, no [DONE]
        w.llama.script(FakeResponse.stream([cut]))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for c in w.gateway.stub.StreamChat(chat_request(model="local"), timeout=10):
                received.append(c.text_delta)
        assert received == ["Hel"]
        assert details_of(caught.value).error_info.reason == "UPSTREAM_STREAM_TRUNCATED"


@pytest.mark.parametrize("streaming", [False, True], ids=["Chat", "StreamChat"])
async def test_a_prompt_over_the_context_window_is_refused_before_any_upstream_call(
    streaming: bool,
) -> None:
    async with world() as w:
        request = chat_request(LONG, model="small")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if streaming:
                async for _ in w.gateway.stub.StreamChat(request, timeout=10):
                    pass
            else:
                await w.gateway.stub.Chat(request, timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
        )
        assert "1000-token context window" in details.violations["messages"]
        assert details.error_info.metadata["contextWindow"] == "1000"
        assert int(details.error_info.metadata["estimatedPromptTokens"]) > 1000
        assert details.error_info.metadata["attempts"] == "0"
        assert len(w.llama.requests) == 0 and len(w.big.requests) == 0
        # A prompt that fits goes through.
        reply = await w.gateway.stub.Chat(chat_request("short", model="small"), timeout=10)
        assert reply.message.parts[0].text == "short"
        assert w.llama_calls("m-small") == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["Chat", "StreamChat"])
async def test_a_prompt_over_the_context_window_goes_to_the_context_fallback(
    streaming: bool,
) -> None:
    async with world() as w:
        request = chat_request(LONG, model="roomy")
        if streaming:
            chunks = [c async for c in w.gateway.stub.StreamChat(request, timeout=10)]
            route = chunks[0].route
            text = "".join(c.text_delta for c in chunks)
        else:
            reply = await w.gateway.stub.Chat(request, timeout=10)
            route = reply.route
            text = reply.message.parts[0].text
        assert text.split() == LONG.split()
        assert (route.provider, route.upstream_model, route.fallback_used, route.attempts) == (
            "big",
            "m-large",
            True,
            1,
        )
        assert w.llama_calls("m-roomy") == 0, "the small deployment got nothing"
        assert len(w.big.requests) == 1
