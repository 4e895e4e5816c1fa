"""Load balancing across the deployments of one alias, through the running gateway:
the spread each strategy promises, failover to the alias's other deployments before its
fallbacks, breakers that take a deployment out, and calls in flight (streams included)
steering the least-loaded strategy."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from llmgateway.v1 import models_pb2

from service.config import ConfigError, parse_config
from service.providers.base import Deployment
from service.routing.balancer import Balancer
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{consecutive_failures: 2, cool_down: 30s}}}}
providers:
  - {{name: east, mock: {{faults_from_metadata: true}}}}
  - {{name: west, mock: {{faults_from_metadata: true}}}}
  - {{name: down, mock: {{fault: {{http_status: 503}}}}}}
  - {{name: spare, mock: {{}}}}
models:
  - alias: pooled
    balance: {strategy}
    deployments:
      - {{provider: east, upstream_model: m-east, weight: 2}}
      - {{provider: west, upstream_model: m-west}}
    fallbacks: [backup]
  - alias: doomed
    deployments: [{{provider: down, upstream_model: d1}}, {{provider: down, upstream_model: d2}}]
    fallbacks: [backup]
  - {{alias: backup, provider: spare}}
"""


async def gateway_with(strategy: str) -> AsyncIterator[Gateway]:
    async with running_gateway(CONFIG.format(strategy=strategy)) as gateway:
        yield gateway


async def served_by(gateway: Gateway, count: int, **kwargs: object) -> list[str]:
    providers = []
    for _ in range(count):
        reply = await gateway.stub.Chat(chat_request("hi", model="pooled"), timeout=5, **kwargs)
        assert not reply.route.fallback_used, "another deployment of the alias is no fallback"
        providers.append(reply.route.provider)
    return providers


async def upstream_requests(gateway: Gateway) -> dict[str, int]:
    stats = await gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5)
    return {p.provider: p.requests for p in stats.providers}


async def test_round_robin_follows_the_weights_in_turn() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_ROUND_ROBIN"):
        assert await served_by(gateway, 6) == ["east", "west", "east"] * 2
        reply = await gateway.stub.Chat(chat_request("hi", model="pooled"), timeout=5)
        assert reply.route.upstream_model == "m-east"
        requests = await upstream_requests(gateway)
        assert (requests["east"], requests["west"]) == (5, 2)


async def test_weighted_random_shares_follow_the_weights() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_WEIGHTED_RANDOM"):
        gateway.server.router.balancer = Balancer(random.Random(42).random)
        shares = Counter(await served_by(gateway, 300))
        assert 170 <= shares["east"] <= 230, shares  # 2:1 → about 200 of 300
        assert shares["east"] + shares["west"] == 300


async def test_failover_to_the_other_deployment_before_the_fallback() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_ROUND_ROBIN"):
        fail_east = (("x-mock-fail-status", "503"), ("x-mock-target", "east"))
        reply = await gateway.stub.Chat(
            chat_request("hi", model="pooled"), metadata=fail_east, timeout=5
        )
        assert (reply.route.provider, reply.route.attempts) == ("west", 2)
        assert not reply.route.fallback_used
        # Turns alternate; east's second failure opens its breaker. Calls then go to
        # west without trying east.
        for _ in range(2):
            reply = await gateway.stub.Chat(
                chat_request("hi", model="pooled"), metadata=fail_east, timeout=5
            )
            assert reply.route.provider == "west"
        before = await upstream_requests(gateway)
        assert await served_by(gateway, 4) == ["west"] * 4
        after = await upstream_requests(gateway)
        assert after["east"] == before["east"], "an open breaker takes the deployment out"
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(provider="east"), timeout=5
        )
        assert stats.providers[0].deployments[0].circuit_state == models_pb2.CIRCUIT_STATE_OPEN


async def test_every_deployment_down_then_the_fallback_alias() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_ROUND_ROBIN"):
        reply = await gateway.stub.Chat(chat_request("hi", model="doomed"), timeout=5)
        assert (reply.route.provider, reply.route.attempts) == ("spare", 3)
        assert reply.route.fallback_used
        assert (await upstream_requests(gateway))["down"] == 2, "each deployment tried once"


async def in_flight_becomes(
    balancer: Balancer, deployments: tuple[Deployment, ...], expected: tuple[int, ...]
) -> None:
    """Waits until the deployments have these numbers of calls in flight (bounded: 10 s)."""

    def counts() -> tuple[int, ...]:
        return tuple(balancer.in_flight(d) for d in deployments)

    for _ in range(1000):
        if counts() == expected:
            return
        await asyncio.sleep(0.01)
    assert counts() == expected


async def test_least_in_flight_avoids_the_busy_deployment() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_LEAST_IN_FLIGHT"):
        balancer = gateway.server.router.balancer
        members = gateway.server.registry.pools["pooled"].members
        pair = tuple(member.deployment for member in members)  # east, west

        # Both stall far longer than the test: in flight until the test cancels them.
        stall = (("x-mock-stall", "30"),)
        slow = gateway.stub.Chat(chat_request("slow", model="pooled"), metadata=stall, timeout=60)
        stream = gateway.stub.StreamChat(
            chat_request("a b c", model="pooled"), metadata=stall, timeout=60
        )
        # east weighs 2: one call each gives east 0.5 per weight, west 1.0.
        await in_flight_becomes(balancer, pair, (1, 1))
        assert await served_by(gateway, 3) == ["east"] * 3
        slow.cancel()
        stream.cancel()
        await in_flight_becomes(balancer, pair, (0, 0))
        # A stream that runs to its end gives its place back too.
        chunks = [
            chunk
            async for chunk in gateway.stub.StreamChat(
                chat_request("a b c", model="pooled"), timeout=10
            )
        ]
        assert chunks[-1].usage.total_tokens > 0, "the stream ran to its end"
        await in_flight_becomes(balancer, pair, (0, 0))


async def test_pools_are_validated_with_field_paths() -> None:
    base = "auth: {disabled: true}\nproviders:\n  - {name: a, mock: {}}\nmodels:\n  - "
    cases = [
        ("{alias: p, provider: a, deployments: [{provider: a}]}", "models[0].deployments", "either"),
        ("{alias: p, deployments: [{provider: nope}]}", "models[0].deployments[0].provider", "nope"),
        ("{alias: p, deployments: [{provider: a, weight: 0}]}", "models[0].deployments[0].weight", "1 to 1000"),
        ("{alias: p, deployments: [{provider: a}, {provider: a}]}", "models[0].deployments[1]", "twice"),
        ("{alias: p, provider: a, balance: BALANCE_STRATEGY_ROUND_ROBIN}", "models[0].balance", "needs deployments"),
    ]  # fmt: skip
    for text, path, problem in cases:
        with pytest.raises(ConfigError) as caught:
            parse_config(base + text + "\n", {})
        assert caught.value.path == path, text
        assert problem in caught.value.problem, text


async def test_deployments_whose_key_is_missing_are_left_out() -> None:
    text = """
auth: {disabled: true}
providers:
  - {name: keyed, api_key_env: KEYED_KEY, skip_if_key_missing: true, mock: {}}
  - {name: free, mock: {}}
models:
  - alias: p
    deployments: [{provider: keyed}, {provider: free}]
  - alias: only-keyed
    deployments: [{provider: keyed}]
"""
    loaded = parse_config(text, {})
    assert [m.alias for m in loaded.config.models] == ["p"]
    assert [t.provider for t in loaded.config.models[0].deployments] == ["free"]
    async with running_gateway(text) as gateway:
        reply = await gateway.stub.Chat(chat_request("hi", model="p"), timeout=5)
        assert reply.route.provider == "free"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("hi", model="only-keyed"), timeout=5)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.error_info.reason == "PROVIDER_KEY_MISSING"
        listed = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        by_alias = {m.alias: m for m in listed.models}
        assert by_alias["only-keyed"].unavailable
        assert list(by_alias["only-keyed"].unavailable_reasons) == ["PROVIDER_KEY_MISSING"]
        assert not by_alias["p"].unavailable, "its other deployment can take calls"
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(provider="keyed"), timeout=5
        )
        [keyed] = stats.providers
        assert keyed.provider_type == "mock"
        assert [(d.upstream_model, d.key_missing) for d in keyed.deployments] == [
            ("only-keyed", True),
            ("p", True),
        ]


async def test_list_models_shows_every_deployment_of_a_pool() -> None:
    async for gateway in gateway_with("BALANCE_STRATEGY_ROUND_ROBIN"):
        listed = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        pooled = next(m for m in listed.models if m.alias == "pooled")
        assert [(d.provider, d.upstream_model, d.weight) for d in pooled.deployments] == [
            ("east", "m-east", 2),
            ("west", "m-west", 1),
        ]
        assert (pooled.provider, pooled.upstream_model) == ("east", "m-east")
        backup = next(m for m in listed.models if m.alias == "backup")
        assert list(backup.deployments) == []
        by_west = await gateway.stub.ListModels(
            models_pb2.ListModelsRequest(provider="west"), timeout=5
        )
        assert [m.alias for m in by_west.models] == ["pooled"]


POOL_CONFIG = """
server: {host: 127.0.0.1, port: 0}
routing: {retry: {max_attempts: 1}, breaker: {disabled: true}}
providers:
  - {name: east, mock: {faults_from_metadata: true}}
  - {name: west, mock: {faults_from_metadata: true}}
  - {name: solo, mock: {faults_from_metadata: true}}
models:
  - alias: pooled
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    deployments: [{provider: east, upstream_model: e}, {provider: west, upstream_model: w}]
    cache: {ttl: 60s}
  - {alias: single, provider: solo, fallbacks: [pooled]}
"""


async def test_turns_are_taken_only_by_calls_that_reach_the_pool() -> None:
    async with running_gateway(POOL_CONFIG) as gateway:
        stub = gateway.stub
        providers = []
        for i in range(4):
            miss = await stub.Chat(chat_request(f"question {i}", model="pooled"), timeout=5)
            hit = await stub.Chat(chat_request(f"question {i}", model="pooled"), timeout=5)
            assert hit.route.cache_hit and not miss.route.cache_hit
            assert hit.route.provider == miss.route.provider
            providers.append(miss.route.provider)
            # A call served by another alias that lists the pool as its fallback.
            await stub.Chat(chat_request(f"other {i}", model="single"), timeout=5)
        assert providers == ["east", "west", "east", "west"], "hits and fallbacks take no turn"


async def test_a_pool_of_different_kinds_serves_what_any_of_its_deployments_can() -> None:
    from tests.fakes.http_server import FakeHttpServer
    from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig

    config = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: local, base_url: "{local}/v1", openai_compatible: {{}}}}
  - {{name: cloud, api_key_env: CLOUD_KEY, base_url: "{cloud}/v1", openai: {{}}}}
models:
  - alias: mixed
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    deployments: [{{provider: local, upstream_model: l}}, {{provider: cloud, upstream_model: c}}]
"""
    local_fake = OpenAIFake(OpenAIFakeConfig(auth="none"))
    cloud_fake = OpenAIFake(OpenAIFakeConfig(key="sk-cloud"))
    async with (
        FakeHttpServer(local_fake.handle) as local,
        FakeHttpServer(cloud_fake.handle) as cloud,
    ):
        text = config.format(local=local.url, cloud=cloud.url)
        async with running_gateway(text, {"CLOUD_KEY": "sk-cloud"}) as gateway:
            # The local server takes no images (its kind's default); the cloud one does.
            for _ in range(2):
                request = chat_request("look", model="mixed")
                request.messages[0].parts.add().image.url = "https://example.com/a.png"
                reply = await gateway.stub.Chat(request, timeout=5)
                assert reply.route.provider == "cloud"
            assert local.requests == [], "the deployment that cannot see is never tried"
            served = [
                (
                    await gateway.stub.Chat(chat_request("hi", model="mixed"), timeout=5)
                ).route.provider
                for _ in range(2)
            ]
            assert sorted(served) == ["cloud", "local"], "text still goes to both"
