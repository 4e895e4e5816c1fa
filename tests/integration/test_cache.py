"""The response cache and request coalescing through the running gateway, counted at a
fake OpenAI upstream: hits make no upstream call and cost nothing, identical calls in
flight share one upstream call, a caller that leaves does not fail the others, and the
upstream request is closed when every caller has gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.v1 import embed_pb2
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
audit: {{path: "{audit}"}}
routing: {{retry: {{max_attempts: 1}}}}
auth:
  issuers:
    - {{issuer: t, audiences: [gw], algorithms: [HS256], secret_env: CACHE_SECRET}}
cache: {{max_entries: 100}}
providers:
  - {{name: openai, api_key_env: CACHE_KEY, base_url: "{upstream}/v1", openai: {{}}}}
models:
  - alias: cached
    provider: openai
    upstream_model: gpt-4o-mini
    cache: {{ttl: 60s}}
    pricing: {{input_per_million: 1000000, output_per_million: 1000000}}
  - {{alias: embed, provider: openai, upstream_model: te-3, cache: {{ttl: 60s}}, capabilities: {{embeddings: true}}}}
  - {{alias: uncached, provider: openai, upstream_model: gpt-4o-mini}}
"""
SECRET = "cache-test-secret-0123456789abcdef0123"


@dataclass
class World:
    gateway: Gateway
    upstream: FakeHttpServer
    delay: list[float]
    audit: Path
    answer: asyncio.Event  # the upstream answers only while it is set

    def chats(self) -> int:
        return sum(1 for r in self.upstream.requests if r.path.endswith("/chat/completions"))

    def misses(self) -> int:
        """Cache lookups that missed. A call that misses joins the identical call in
        flight (or starts it) before it next yields to the loop: once `n` calls have
        missed, all `n` are waiting on the one upstream call."""
        cache = self.gateway.server.router.cache
        assert cache is not None
        return cache.misses

    def records(self) -> dict[str, dict[str, Any]]:
        """The audit records written so far (complete lines), by request id."""
        if not self.audit.exists():
            return {}
        lines = self.audit.read_text().split("\n")[:-1]
        return {r["request_id"]: r for r in map(json.loads, lines)}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    fake = OpenAIFake(OpenAIFakeConfig(key="sk-cache"))
    delay = [0.0]
    answer = asyncio.Event()
    answer.set()

    async def handler(request: FakeRequest) -> FakeResponse:
        await asyncio.wait_for(answer.wait(), 10)  # bounded: a test that forgot fails
        response = fake.handle(request)
        response.header_delay = delay[0]
        return response

    async with FakeHttpServer(handler) as upstream:
        config = CONFIG.format(upstream=upstream.url, audit=tmp_path / "audit.jsonl")
        environ = {"CACHE_KEY": "sk-cache", "CACHE_SECRET": SECRET}
        async with running_gateway(config, environ=environ) as gateway:
            yield World(gateway, upstream, delay, tmp_path / "audit.jsonl", answer)


def bearer(sub: str = "alice", tenant: str = "acme") -> tuple[tuple[str, str], ...]:
    from tests.fakes.keys import claims, sign

    token = sign(claims("t", sub=sub, tenant=tenant, aud="gw", scope="chat embed"), SECRET, "HS256")
    return (("authorization", f"Bearer {token}"),)


async def test_a_hit_makes_no_upstream_call_and_costs_nothing(world: World) -> None:
    stub = world.gateway.stub
    first = await stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer(), timeout=5
    )
    assert not first.route.cache_hit and first.route.attempts == 1
    assert first.usage.cost_usd > 0
    second = await stub.Chat(
        chat_request("what is up", model="cached", labels={"team": "b"}),
        metadata=bearer("bob"),  # same tenant: same entry
        timeout=5,
    )
    assert world.chats() == 1
    assert second.route.cache_hit and second.route.attempts == 0
    assert second.message == first.message
    assert second.usage.input_tokens == first.usage.input_tokens
    assert second.usage.cost_usd == 0, "a hit costs nothing upstream"
    assert (second.route.provider, second.route.upstream_model) == ("openai", "gpt-4o-mini")
    assert second.id != first.id, "each call has its own id"
    # Another question, another tenant, an alias without cache: each goes upstream.
    await stub.Chat(chat_request("what is down", model="cached"), metadata=bearer(), timeout=5)
    await stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer("zed", "zeta"), timeout=5
    )
    await stub.Chat(chat_request("what is up", model="uncached"), metadata=bearer(), timeout=5)
    await stub.Chat(chat_request("what is up", model="uncached"), metadata=bearer(), timeout=5)
    assert world.chats() == 5


async def test_bypass_and_refresh(world: World) -> None:
    stub = world.gateway.stub
    request = chat_request("again", model="cached")
    await stub.Chat(request, metadata=bearer(), timeout=5)
    bypass = await stub.Chat(request, metadata=(*bearer(), ("x-llm-cache", "bypass")), timeout=5)
    assert not bypass.route.cache_hit and world.chats() == 2
    refresh = await stub.Chat(request, metadata=(*bearer(), ("x-llm-cache", "refresh")), timeout=5)
    assert not refresh.route.cache_hit and world.chats() == 3
    hit = await stub.Chat(request, metadata=bearer(), timeout=5)
    assert hit.route.cache_hit and world.chats() == 3
    assert hit.route.upstream_request_id == refresh.route.upstream_request_id


async def until(condition: Callable[[], bool]) -> None:
    """Waits for a condition about the gateway's state (bounded: 10 s)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), "timed out"


async def test_identical_calls_in_flight_share_one_upstream_call(world: World) -> None:
    world.answer.clear()  # the upstream answers once all five calls wait for it
    stub = world.gateway.stub
    calls = [
        stub.Chat(chat_request("same question", model="cached"), metadata=bearer(), timeout=10)
        for _ in range(5)
    ]
    await until(lambda: world.misses() == 5)
    world.answer.set()
    replies = await asyncio.gather(*calls)
    assert world.chats() == 1
    assert sum(r.route.coalesced for r in replies) == 4
    assert sum(r.route.attempts for r in replies) == 1
    assert len({r.message.SerializeToString() for r in replies}) == 1
    assert len({r.id for r in replies}) == 5
    # The audit log says which calls made no upstream call of their own.

    def chat_records() -> list[dict[str, object]]:
        return [r for r in world.records().values() if str(r["method"]).endswith("/Chat")]

    assert await world.upstream.wait_for(lambda: len(chat_records()) == 5)
    chats = chat_records()
    assert sorted(r["cache_hit"] for r in chats) == [False] + [True] * 4
    assert all(r["provider"] == "openai" for r in chats)
    exposed = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(
            generate_latest(world.gateway.server.metrics_registry).decode()
        )
        for sample in family.samples
    }
    assert exposed[("llm_gateway_coalesced_calls_total", ())] == 4
    assert exposed[("llm_gateway_cache_lookups_total", (("result", "miss"),))] == 5
    assert exposed[("llm_gateway_cache_entries", ())] == 1


async def test_a_caller_leaving_does_not_fail_the_others(world: World) -> None:
    world.answer.clear()  # the upstream answers once the impatient caller has gone
    stub = world.gateway.stub
    request = chat_request("patience", model="cached")
    patient = stub.Chat(request, metadata=bearer(), timeout=10)
    await until(lambda: world.chats() == 1)
    impatient = stub.Chat(request, metadata=bearer(), timeout=1)
    await until(lambda: world.misses() == 2)  # it joined the patient caller's call
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await impatient
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    world.answer.set()
    reply = await patient
    assert reply.message.parts[0].text == "patience"
    assert world.chats() == 1
    assert world.upstream.client_disconnects == 0


async def test_the_upstream_call_closes_when_every_caller_has_gone(world: World) -> None:
    world.delay[0] = 30.0  # the fake stops waiting as soon as the gateway closes the request
    stub = world.gateway.stub
    calls = [
        stub.Chat(chat_request("nobody waits", model="cached"), metadata=bearer(), timeout=5)
        for _ in range(3)
    ]
    assert await world.upstream.wait_for(lambda: world.chats() == 1)
    for call in calls:
        call.cancel()
    assert await world.upstream.wait_for(lambda: world.upstream.client_disconnects == 1)
    assert await world.upstream.wait_for(lambda: world.upstream.open_connections <= 1)
    assert len(world.gateway.server.router.coalescer) == 0


async def test_embeddings_are_cached_too(world: World) -> None:
    stub = world.gateway.stub
    request = embed_pb2.EmbedRequest(model="embed", inputs=["alpha", "beta"])
    first = await stub.Embed(request, metadata=bearer(), timeout=5)
    second = await stub.Embed(request, metadata=bearer(), timeout=5)
    assert [list(e.values) for e in first.embeddings] == [list(e.values) for e in second.embeddings]
    assert second.route.cache_hit and not first.route.cache_hit
    assert sum(1 for r in world.upstream.requests if r.path.endswith("/embeddings")) == 1


async def test_a_joined_call_outlives_the_first_callers_deadline(world: World) -> None:
    world.answer.clear()  # the upstream answers once the first caller's deadline passed
    stub = world.gateway.stub
    request = chat_request("long and short", model="cached")
    first = stub.Chat(request, metadata=bearer(), timeout=1)
    await until(lambda: world.chats() == 1)
    joined = asyncio.ensure_future(stub.Chat(request, metadata=bearer(), timeout=10))
    await until(lambda: world.misses() == 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    world.answer.set()
    joined_reply = await joined
    # The shared call ended with the first caller's deadline; the joiner ran on its own.
    assert joined_reply.message.parts[0].text == "long and short"
    assert not joined_reply.route.coalesced and joined_reply.route.attempts == 1
    assert world.chats() == 2


async def test_when_the_first_caller_leaves_the_next_one_pays(world: World) -> None:
    world.answer.clear()  # the upstream answers once the first caller has gone
    stub = world.gateway.stub
    request = chat_request("who pays", model="cached")
    first = stub.Chat(request, metadata=(("x-request-id", "first"), *bearer()), timeout=10)
    await until(lambda: world.chats() == 1)
    second = asyncio.ensure_future(stub.Chat(request, metadata=bearer(), timeout=10))
    await until(lambda: world.misses() == 2)  # the second call has joined the first one's work
    first.cancel()
    # The gateway saw the first caller go (its record is written when it has).
    await until(lambda: world.records().get("first", {}).get("status") == "CANCELLED")
    world.answer.set()
    reply = await second
    assert world.chats() == 1, "the upstream call went on for the caller still waiting"
    assert not reply.route.coalesced, "it is that caller's answer now"
    assert reply.route.attempts == 1 and reply.usage.cost_usd > 0
