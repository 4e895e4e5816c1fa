"""The shared store failing well: a Redis that hangs (SIGSTOP: a partition, not a
refusal) costs its timeout only until the store's guard pauses it, after which calls are
answered at once by on_failure, every skip counted; and the spend of calls let through
while Redis was down (SIGKILL) is charged once it is back, not forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.auth.identity import scoped
from service.limits import budgets
from service.shared_store.guard import GuardState
from tests.fakes.keys import HS_SECRET
from tests.fakes.redis_server import REDIS_PASSWORD, RedisServer, redis_server
from tests.integration.test_limits import CONFIG, bearer
from tests.support import Gateway, chat_request, running_gateway

_prefixes = itertools.count()
# "a b" costs $0.40 at the test config's prices.
COST_NANOS = 400_000_000
LIMITS = (
    "  subject: {requests_per_minute: 1000}\n"
    "  tenant: {budget_usd: 100, budget_period: BUDGET_PERIOD_DAY}"
)


@contextlib.asynccontextmanager
async def gateway(server: RedisServer, store: str) -> AsyncIterator[tuple[Gateway, str]]:
    prefix = f"outage{next(_prefixes)}:"
    config = CONFIG.format(limits=LIMITS) + (
        f"redis: {{url_env: GW_REDIS_URL, key_prefix: '{prefix}', {store}}}\n"
    )
    environ = {"GW_SECRET": HS_SECRET, "GW_REDIS_URL": server.url}
    async with running_gateway(config, environ=environ) as running:
        yield running, prefix


def exposed(gw: Gateway) -> dict[str, float]:
    return {
        sample.name + "".join(f"{{{v}}}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(
            generate_latest(gw.server.metrics_registry).decode()
        )
        for sample in family.samples
    }


def spend_key(prefix: str, tenant: str) -> str:
    day = budgets.window(budgets.Period.DAY, time.time()).key
    return f"{prefix}usd:tenant:{scoped('dev', tenant)}:{day}"


async def test_a_hanging_store_is_paused_after_failures_in_a_row_and_calls_skip_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with redis_server() as server:
        # A long pause: no probe during the test, so every count below is exact.
        store = "timeout: 1s, failures_to_pause: 3, pause: 600s"
        async with gateway(server, store) as (gw, _):
            shared = gw.server.shared_store
            assert shared is not None
            await gw.stub.Chat(chat_request("a b"), metadata=bearer(tenant="acme"), timeout=10)
            before = shared.guard.failures  # 0 unless the loaded machine was slow
            assert shared.guard.consecutive_failures == 0
            server.pause()
            try:
                for _ in range(6):
                    reply = await gw.stub.Chat(
                        chat_request("a b"), metadata=bearer(tenant="acme"), timeout=10
                    )
                    assert reply.message.parts[0].text == "a b"
                guard = shared.guard
                # Each call asks the store twice (admission, then its spend): the first
                # three operations waited out the timeout, the nine after it were skipped.
                assert guard.failures - before == 3, "only three operations paid the timeout"
                assert guard.skipped == 9
                assert guard.state is GuardState.OPEN
                metrics = exposed(gw)
                assert metrics["llm_gateway_shared_store_failures_total"] == guard.failures
                assert metrics["llm_gateway_shared_store_skips_total"] == 9
                assert metrics["llm_gateway_shared_store_paused"] == 1
                assert gw.server.limiter.failures.count == 12 + before, "every call counted"
                # The six calls' spend is kept for when the store answers again.
                assert gw.server.limiter.pending.stats()["queued"] == 6
                paused = [r for r in caplog.records if r.getMessage() == "shared store paused"]
                assert len(paused) == 1, "logged once, when it paused"
                assert paused[0].fields["error"] == "TimeoutError"  # type: ignore[attr-defined]
                assert all(
                    REDIS_PASSWORD not in r.getMessage() + str(r.__dict__) for r in caplog.records
                )
            finally:
                server.resume()


async def test_spend_let_through_during_an_outage_is_charged_when_redis_is_back() -> None:
    with redis_server() as server:
        raw = redis.Redis.from_url(server.url, socket_timeout=5)
        try:
            async with gateway(server, "timeout: 2s, pause: 0.2s") as (gw, prefix):
                key = spend_key(prefix, "acme")
                await gw.stub.Chat(chat_request("a b"), metadata=bearer(tenant="acme"), timeout=10)
                assert int(await raw.get(key) or 0) == COST_NANOS
                server.kill()
                for sub in ("u1", "u2"):
                    await gw.stub.Chat(
                        chat_request("a b"), metadata=bearer(sub, tenant="acme"), timeout=10
                    )
                pending = gw.server.limiter.pending
                assert pending.stats()["queued"] == 2 and len(pending) == 1
                server.start()  # empty: without persistence the first spend is gone
                await raw.aclose()
                raw = redis.Redis.from_url(server.url, socket_timeout=5)
                for _ in range(600):  # bounded: 600 reads of the key
                    if int(await raw.get(key) or 0) == 2 * COST_NANOS:
                        break
                    await asyncio.sleep(0.05)
                assert int(await raw.get(key) or 0) == 2 * COST_NANOS
                assert pending.stats() == {"queued": 2, "charged": 2, "dropped": 0, "pending": 0}
                assert exposed(gw)["llm_gateway_pending_spend_total{charged}"] == 2
                ttl = await raw.pttl(key)
                assert ttl > 3_600_000, "kept at least until the day (and its slack) ends"
        finally:
            await raw.aclose()
