"""The response cache in Redis, shared by two gateway processes: an answer one replica
stored is a hit on the other, with no upstream call; tenants still see only their own
entries; and a Redis that dies means calls answered upstream without cache, counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import claims, sign
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.fakes.redis_server import RedisServer, redis_server
from tests.integration.replicas import Replica, replica_processes
from tests.support import chat_request

SECRET = "shared-cache-secret-0123456789abcdef0123"
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
metrics: {{port: 0}}
routing: {{retry: {{max_attempts: 1}}}}
auth:
  issuers:
    - {{issuer: t, audiences: [gw], algorithms: [HS256], secret_env: CACHE_SECRET}}
redis: {{url_env: GW_REDIS_URL, timeout: 2s}}
cache: {{store: CACHE_STORE_REDIS, max_entries: 100}}
providers:
  - {{name: openai, api_key_env: CACHE_KEY, base_url: "{upstream}/v1", openai: {{}}}}
models:
  - alias: cached
    provider: openai
    upstream_model: gpt-4o-mini
    cache: {{ttl: 60s}}
"""


def bearer(sub: str = "alice", tenant: str = "acme") -> tuple[tuple[str, str], ...]:
    token = sign(claims("t", sub=sub, tenant=tenant, aud="gw", scope="chat"), SECRET, "HS256")
    return (("authorization", f"Bearer {token}"),)


@dataclass
class World:
    a: Replica
    b: Replica
    upstream: FakeHttpServer
    redis: RedisServer

    def chats(self) -> int:
        return sum(1 for r in self.upstream.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest_asyncio.fixture
async def world(tmp_path: Path, redis: RedisServer) -> AsyncIterator[World]:
    fake = OpenAIFake(OpenAIFakeConfig(key="sk-cache"))

    async def handler(request: FakeRequest) -> FakeResponse:
        return fake.handle(request)

    async with FakeHttpServer(handler) as upstream:
        env = {"CACHE_KEY": "sk-cache", "CACHE_SECRET": SECRET, "GW_REDIS_URL": redis.url}
        config = CONFIG.format(upstream=upstream.url)
        async with replica_processes(config, tmp_path, env) as (a, b):
            yield World(a, b, upstream, redis)


async def test_an_answer_one_replica_stored_is_a_hit_on_the_other(world: World) -> None:
    first = await world.a.stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer(), timeout=10
    )
    assert not first.route.cache_hit
    assert world.chats() == 1
    second = await world.b.stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer("bob"), timeout=10
    )
    assert second.route.cache_hit and second.route.attempts == 0
    assert world.chats() == 1, "the other replica made no upstream call"
    assert second.message == first.message
    assert second.usage.output_tokens == first.usage.output_tokens
    assert (second.route.provider, second.route.upstream_model) == ("openai", "gpt-4o-mini")
    # Another tenant asks the same on either replica: not its entry.
    other = await world.b.stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer("zed", "zeta"), timeout=10
    )
    assert not other.route.cache_hit
    assert world.chats() == 2
    again = await world.a.stub.Chat(
        chat_request("what is up", model="cached"), metadata=bearer("zoe", "zeta"), timeout=10
    )
    assert again.route.cache_hit and world.chats() == 2
    metrics_b = await world.b.metrics()
    assert metrics_b["llm_gateway_cache_lookups_total{result=hit}"] == 1
    assert metrics_b["llm_gateway_cache_lookups_total{result=miss}"] == 1
    assert metrics_b["llm_gateway_cache_entries"] == 2, "entries of both replicas"


async def test_without_redis_calls_are_answered_upstream_and_counted(world: World) -> None:
    await world.a.stub.Chat(chat_request("hello", model="cached"), metadata=bearer(), timeout=10)
    world.redis.kill()
    for replica in (world.a, world.b, world.b):
        reply = await replica.stub.Chat(
            chat_request("hello", model="cached"), metadata=bearer(), timeout=10
        )
        assert not reply.route.cache_hit
    assert world.chats() == 4, "every call went upstream: no cache, no error"
    metrics_b = await world.b.metrics()
    # Each call: a lookup and a store the store did not answer (or the guard skipped).
    assert metrics_b["llm_gateway_cache_unavailable_total"] == 4
    assert metrics_b["llm_gateway_cache_lookups_total{result=hit}"] == 0
