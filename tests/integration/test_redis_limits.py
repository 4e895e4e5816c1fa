"""Limits and budgets shared by several replicas through a real redis-server: two
gateways behind one Redis hold one allowance between them, and a Redis outage lets
calls through or refuses them, as configured, counting every failure."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from llmgateway.v1 import chat_pb2, models_pb2
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.keys import HS_SECRET
from tests.fakes.redis_server import REDIS_PASSWORD, RedisServer, redis_server
from tests.integration.test_limits import CONFIG, bearer, refused_of_stalled_calls
from tests.support import Gateway, chat_request, details_of, running_gateway

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@contextlib.asynccontextmanager
async def replicas(
    server: RedisServer, limits: str, on_failure: str = "STORE_FAILURE_MODE_ALLOW", count: int = 2
) -> AsyncIterator[list[Gateway]]:
    """`count` gateways with one configuration, sharing `server` (a fresh key prefix each
    time, so tests do not see each other's state). The outages here are a stopped server,
    refused at once: the timeout only has to be longer than a busy machine's pauses."""
    store = (
        f"  redis: {{url_env: GW_REDIS_URL, key_prefix: 'test{next(_prefixes)}:', "
        f"on_failure: {on_failure}, timeout: 2s}}\n"
    )
    config = CONFIG.format(limits=limits + "\n" + store)
    environ = {"GW_SECRET": HS_SECRET, "GW_REDIS_URL": server.url}
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_gateway(config, environ=environ))
            for _ in range(count)
        ]


async def upstream_requests(gateways: list[Gateway]) -> int:
    total = 0
    for gateway in gateways:
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(), metadata=bearer("ops"), timeout=5
        )
        total += stats.providers[0].requests
    return total


async def test_requests_per_minute_hold_across_replicas(server: RedisServer) -> None:
    async with replicas(server, "  subjects: {alice: {requests_per_minute: 4}}") as gateways:
        a, b = gateways
        started = time.monotonic()
        for gateway in (a, b, a, b):
            await gateway.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
        for gateway in (a, b):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
            elapsed = time.monotonic() - started
            details = details_of(caught.value)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "CALLER_RATE_LIMITED",
            )
            # One call per 15 s, less what refilled (on Redis's clock) since the first call.
            assert details.retry_info is not None
            delay = details.retry_info.retry_delay.ToNanoseconds() / 1e9
            assert 15 - elapsed - 0.01 <= delay <= 15
            assert details.quota_failure is not None
            assert details.quota_failure.violations[0].subject == "subject:alice"
        assert await upstream_requests(gateways) == 4, "refused calls never reach a provider"
        # Each replica alone would still have allowance; bob has his own.
        await b.stub.Chat(chat_request("hi"), metadata=bearer("bob"), timeout=5)


async def test_a_tenant_budget_spent_on_one_replica_stops_the_other(server: RedisServer) -> None:
    # "a b" costs $0.40; the tenant's daily budget is $0.80.
    limits = "  tenant: {budget_usd: 0.8, budget_period: BUDGET_PERIOD_DAY}"
    async with replicas(server, limits) as (a, b):
        await a.stub.Chat(chat_request("a b"), metadata=bearer("u1", tenant="acme"), timeout=5)
        await a.stub.Chat(chat_request("a b"), metadata=bearer("u2", tenant="acme"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await b.stub.Chat(chat_request("a b"), metadata=bearer("u3", tenant="acme"), timeout=5)
        details = details_of(caught.value)
        assert details.error_info.reason == "BUDGET_EXCEEDED"
        assert details.quota_failure is not None
        assert "$0.80" in details.quota_failure.violations[0].description
        await b.stub.Chat(chat_request("a b"), metadata=bearer("z", tenant="zeta"), timeout=5)


async def test_tokens_per_minute_estimates_are_held_on_the_shared_bucket(
    server: RedisServer,
) -> None:
    # Each call is estimated at about 106 tokens and really uses 2. Reconciled calls
    # leave room; estimates held by calls in flight on both replicas add up.
    config = chat_pb2.GenerationConfig(max_output_tokens=100)
    async with replicas(server, "  subject: {tokens_per_minute: 250}") as (a, b):
        for gateway in (a, b) * 3:
            reply = await gateway.stub.Chat(
                chat_request("x", generation_config=config), metadata=bearer(), timeout=5
            )
            assert reply.usage.total_tokens == 2
        refused = await refused_of_stalled_calls([a, b, a], config)
        assert len(refused) == 1, "two estimates fit the shared 250, the third does not"
        assert details_of(refused[0]).error_info.metadata["limit"] == "tokens_per_minute"


async def test_an_outage_lets_calls_through_when_allowed_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with redis_server() as server:
        async with replicas(server, "  subject: {requests_per_minute: 1}", count=1) as (gw,):
            await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
            server.stop()
            for _ in range(3):
                reply = await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
                assert reply.message.parts[0].text == "hi"
            failures = gw.server.limiter.failures.count
            assert failures >= 3, "every call the store could not check is counted"
            exposed = {
                sample.name: sample.value
                for family in text_string_to_metric_families(
                    generate_latest(gw.server.metrics_registry).decode()
                )
                for sample in family.samples
            }
            assert exposed["llm_gateway_limit_store_failures_total"] == failures
            warnings = [r for r in caplog.records if r.getMessage() == "limit store failed"]
            assert warnings, "the failure is logged"
            assert warnings[0].fields["calls"] == "let through unlimited"  # type: ignore[attr-defined]
            assert all(
                REDIS_PASSWORD not in r.getMessage() + str(r.__dict__) for r in caplog.records
            )
            server.start()
            assert gw.server.shared_store is not None
            gw.server.shared_store.guard.success()  # as if the pause were over and probed
            # Redis came back empty (no persistence): the limit holds again from a full
            # bucket.
            await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
            assert details_of(caught.value).error_info.reason == "CALLER_RATE_LIMITED"


async def test_an_outage_refuses_calls_when_denied() -> None:
    with redis_server() as server:
        async with replicas(
            server, "  subject: {requests_per_minute: 5}", "STORE_FAILURE_MODE_DENY", count=1
        ) as (gw,):
            await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
            server.stop()
            for call in ("Chat", "StreamChat"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    if call == "Chat":
                        await gw.stub.Chat(chat_request("hi"), metadata=bearer(), timeout=5)
                    else:
                        async for _ in gw.stub.StreamChat(
                            chat_request("hi"), metadata=bearer(), timeout=5
                        ):
                            pass
                details = details_of(caught.value)
                assert (details.code, details.error_info.reason) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "LIMITS_UNAVAILABLE",
                )
                assert details.retry_info is not None
            assert await upstream_requests([gw]) == 1, "refused calls never reach a provider"
            assert gw.server.limiter.failures.count >= 2
            # Calls of a subject without limits never touch the store.
            await gw.stub.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(), timeout=5)
