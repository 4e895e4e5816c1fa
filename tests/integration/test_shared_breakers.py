"""Circuit breakers that learn together through Redis: a breaker one gateway process
opens is open on another within its poll, which then sends nothing to the failing
deployment; and the probe after the cool-down is one for all replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from llmgateway.v1 import models_pb2

from service.providers.base import Capabilities, Deployment
from service.routing.breaker import BreakerSettings, CircuitBreaker, State
from service.routing.shared_breakers import SharedBreakers
from service.shared_store.connection import SharedRedis
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import error_body
from tests.fakes.redis_server import RedisServer, redis_server
from tests.integration.replicas import Replica, replica_processes
from tests.support import chat_request

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
auth: {{disabled: true}}
routing:
  retry: {{max_attempts: 1}}
  breaker: {{consecutive_failures: 2, cool_down: 300s, shared: true}}
redis: {{url_env: GW_REDIS_URL, timeout: 2s, key_prefix: "{prefix}"}}
providers:
  - {{name: flaky, api_key_env: FLAKY_KEY, base_url: "{upstream}/v1", openai: {{}}}}
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: main, provider: flaky, upstream_model: gpt-4o-mini, fallbacks: [spare]}}
  - {{alias: spare, provider: mock, upstream_model: mock-echo-1}}
"""
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


async def circuit_state(replica: Replica) -> int:
    stats = await replica.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(provider="flaky"), timeout=10
    )
    (deployment,) = stats.providers[0].deployments
    assert deployment.upstream_model == "gpt-4o-mini"
    return deployment.circuit_state


async def test_a_breaker_one_replica_opens_stops_the_others_calls(
    server: RedisServer, tmp_path: Path
) -> None:
    async def failing(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json(error_body("overloaded", "server_error"), status=500)

    async with FakeHttpServer(failing) as upstream:
        config = CONFIG.format(upstream=upstream.url, prefix=f"sb{next(_prefixes)}:")
        env = {"FLAKY_KEY": "sk-flaky", "GW_REDIS_URL": server.url}
        async with replica_processes(config, tmp_path, env) as (a, b):
            for _ in range(2):
                reply = await a.stub.Chat(chat_request("hi", model="main"), timeout=10)
                assert reply.route.fallback_used and reply.route.provider == "mock"
            assert len(upstream.requests) == 2
            assert await circuit_state(a) == models_pb2.CIRCUIT_STATE_OPEN
            # B learns it from the store within its poll: wait for exactly that.
            for _ in range(400):  # bounded: 400 polls of B's stats
                if await circuit_state(b) == models_pb2.CIRCUIT_STATE_OPEN:
                    break
                await asyncio.sleep(0.05)
            assert await circuit_state(b) == models_pb2.CIRCUIT_STATE_OPEN
            reply = await b.stub.Chat(chat_request("hi", model="main"), timeout=10)
            assert reply.route.fallback_used and reply.route.provider == "mock"
            assert len(upstream.requests) == 2, "B sent nothing to the failing deployment"


async def test_the_probe_after_the_cool_down_is_one_for_all_replicas(
    server: RedisServer,
) -> None:
    deployment = Deployment(
        alias="main",
        provider="flaky",
        provider_type="openai",
        upstream_model="m",
        capabilities=Capabilities(),
    )
    now = [0.0]
    settings = BreakerSettings(consecutive_failures=1, cool_down=30.0, jitter=0.0, shared=True)
    prefix = f"probe{next(_prefixes)}:"
    replicas = []
    try:
        for _ in range(2):
            shared = SharedRedis(redis.Redis.from_url(server.url, socket_timeout=5), prefix)
            breaker = CircuitBreaker(settings, lambda: now[0])
            breakers = SharedBreakers(shared, lambda _d, b=breaker: b)  # type: ignore[misc]
            breakers.watch([deployment])
            replicas.append((shared, breaker, breakers))
        (_, first, first_shared), (_, second, second_shared) = replicas
        first.failure()  # opens and publishes
        await first_shared.aclose()
        assert first_shared.published == 1
        await second_shared.poll()
        assert second.state is State.OPEN and second.opened_by_peer
        now[0] += 30.0  # both cool-downs are over: each would probe
        assert first.allow() and second.allow()
        assert first.state is State.HALF_OPEN and second.state is State.HALF_OPEN
        assert await first_shared.claim_probe(deployment, first)
        assert not await second_shared.claim_probe(deployment, second)
        assert second.state is State.OPEN, "waits while the other replica probes"
        assert 29.0 < second.open_remaining() <= 30.0
        first.success()  # the probe succeeded: closed, and the keys are gone
        await first_shared.aclose()
        await second_shared.poll()
        assert first.state is State.CLOSED
        now[0] += 30.0
        assert second.allow() and await second_shared.claim_probe(deployment, second)
    finally:
        for shared, _, _ in replicas:
            await shared.aclose()
