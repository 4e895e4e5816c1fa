"""A deployment whose provider says the account is out of quota (OpenAI 429
`insufficient_quota`) rests for `quota_cool_down`: later calls go straight to the next
deployment or fallback, or fail RESOURCE_EXHAUSTED `QUOTA_COOLING_DOWN` with RetryInfo,
instead of hitting the dead key once per call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.fakes.http_server import FakeHttpServer, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, error_body
from tests.support import Gateway, chat_request, details_of, running_gateway

# Breakers that would open after one failure: the quota answer must not count as one.
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing:
  retry: {{max_attempts: 3, initial_backoff: 0.01s, max_backoff: 0.02s}}
  breaker: {{consecutive_failures: 1, minimum_calls: 1000, cool_down: 60s}}
providers:
  - {{name: primary, api_key_env: K, base_url: "{primary}/v1", openai: {{}}}}
  - {{name: secondary, api_key_env: K, base_url: "{secondary}/v1", openai: {{}}}}
  - {{name: brief, api_key_env: K, base_url: "{primary}/v1", quota_cool_down: 0.3s,
      openai: {{}}}}
models:
  - {{alias: main, provider: primary, upstream_model: m-main, fallbacks: [backup]}}
  - {{alias: backup, provider: secondary, upstream_model: m-backup}}
  - {{alias: solo, provider: primary, upstream_model: m-solo}}
  - {{alias: pair, deployments: [{{provider: primary, upstream_model: m-pair}},
                                 {{provider: secondary, upstream_model: m-pair}}]}}
  - {{alias: short, provider: brief, upstream_model: m-short}}
"""

DEFAULT_COOL_DOWN_NS = 60 * 10**9


def out_of_quota() -> FakeResponse:
    return FakeResponse.json(
        error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        429,
    )


@dataclass
class World:
    gateway: Gateway
    primary: FakeHttpServer
    secondary: FakeHttpServer

    def calls(self, server: FakeHttpServer, model: str) -> int:
        return sum(1 for r in server.requests if r.json().get("model") == model)


@contextlib.asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with (
        FakeHttpServer(OpenAIFake(OpenAIFakeConfig(key="k")).handle) as primary,
        FakeHttpServer(OpenAIFake(OpenAIFakeConfig(key="k")).handle) as secondary,
    ):
        config = CONFIG.format(primary=primary.url, secondary=secondary.url)
        async with running_gateway(config, environ={"K": "k"}) as gateway:
            yield World(gateway, primary, secondary)


async def deployment(gateway: Gateway, provider: str, model: str) -> models_pb2.DeploymentStats:
    reply = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(provider=provider), timeout=5
    )
    found = [d for d in reply.providers[0].deployments if d.upstream_model == model]
    assert len(found) == 1, f"no state for {provider}/{model}"
    return found[0]


async def test_out_of_quota_deployment_gets_no_calls_while_its_fallback_serves() -> None:
    async with world() as w:
        w.primary.script(out_of_quota())
        reply = await w.gateway.stub.Chat(chat_request("one", model="main"), timeout=10)
        # Failed over at once: one attempt on the primary, never retried there.
        assert (reply.route.provider, reply.route.attempts, reply.route.fallback_used) == (
            "secondary",
            2,
            True,
        )
        assert reply.message.parts[0].text == "one"
        assert w.calls(w.primary, "m-main") == 1
        for text in ("two", "three", "four"):
            reply = await w.gateway.stub.Chat(chat_request(text, model="main"), timeout=10)
            assert (reply.route.provider, reply.route.attempts, reply.route.fallback_used) == (
                "secondary",
                1,
                True,
            )
            assert reply.message.parts[0].text == text
        chunks = [
            c
            async for c in w.gateway.stub.StreamChat(chat_request("a b", model="main"), timeout=10)
        ]
        assert "".join(c.text_delta for c in chunks) == "a b"
        assert (chunks[0].route.provider, chunks[0].route.attempts) == ("secondary", 1)
        assert w.calls(w.primary, "m-main") == 1, "no further request during the cool-down"
        assert w.calls(w.secondary, "m-backup") == 5
        state = await deployment(w.gateway, "primary", "m-main")
        assert 0 < state.quota_cool_down_remaining.ToNanoseconds() <= DEFAULT_COOL_DOWN_NS
        # Resting is not a circuit failure: the breaker (one failure opens it) stays closed.
        assert state.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED
        assert (state.consecutive_failures, state.times_opened) == (0, 0)


async def test_with_no_deployment_left_the_call_gets_resource_exhausted_and_retry_info() -> None:
    async with world() as w:
        w.primary.script(out_of_quota())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        first = details_of(caught.value)
        assert (first.code, first.error_info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_QUOTA_EXHAUSTED",
        )
        assert first.retry_info is not None
        assert first.retry_info.retry_delay.ToNanoseconds() == DEFAULT_COOL_DOWN_NS
        assert first.error_info.metadata["attempts"] == "1"
        for streaming in (False, True):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if streaming:
                    async for _ in w.gateway.stub.StreamChat(
                        chat_request(model="solo"), timeout=10
                    ):
                        pass
                else:
                    await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
            later = details_of(caught.value)
            assert (later.code, later.error_info.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "QUOTA_COOLING_DOWN",
            )
            assert later.retry_info is not None
            assert 0 < later.retry_info.retry_delay.ToNanoseconds() <= DEFAULT_COOL_DOWN_NS
            assert later.error_info.metadata["attempts"] == "0"
            assert later.error_info.metadata["tried"] == "primary/m-solo:QUOTA_COOLING_DOWN"
        assert w.calls(w.primary, "m-solo") == 1


async def test_every_deployment_out_of_quota_is_resource_exhausted_too() -> None:
    async with world() as w:
        w.primary.script(out_of_quota())
        w.secondary.script(out_of_quota())
        for attempts in ("2", "0"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await w.gateway.stub.Chat(chat_request(model="pair"), timeout=10)
            details = details_of(caught.value)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "QUOTA_COOLING_DOWN",
            )
            assert details.retry_info is not None
            assert 0 < details.retry_info.retry_delay.ToNanoseconds() <= DEFAULT_COOL_DOWN_NS
            assert details.error_info.metadata["attempts"] == attempts
        assert w.calls(w.primary, "m-pair") == 1 and w.calls(w.secondary, "m-pair") == 1


async def test_calls_reach_the_deployment_again_when_its_cool_down_ends() -> None:
    async with world() as w:
        w.primary.script(out_of_quota())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="short"), timeout=10)
        details = details_of(caught.value)
        assert details.retry_info is not None
        assert details.retry_info.retry_delay.ToMilliseconds() == 300, "the provider's own"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="short"), timeout=10)
        assert details_of(caught.value).error_info.reason == "QUOTA_COOLING_DOWN"
        assert w.calls(w.primary, "m-short") == 1

        async def rested() -> bool:
            state = await deployment(w.gateway, "brief", "m-short")
            return state.quota_cool_down_remaining.ToNanoseconds() == 0

        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not await rested():
            assert loop.time() < end, "the cool-down did not end"
            await asyncio.sleep(0.02)
        reply = await w.gateway.stub.Chat(chat_request("back", model="short"), timeout=10)
        assert reply.message.parts[0].text == "back"
        assert (reply.route.provider, reply.route.attempts) == ("brief", 1)
        assert w.calls(w.primary, "m-short") == 2
