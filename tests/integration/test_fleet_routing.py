"""Lowest-latency and lowest-cost balancing through the running gateway, against two
OpenAI-compatible fakes of different speeds and prices: where the calls go (counted at
the fakes), and how traffic moves when a deployment slows down or fails (counted over
the next calls, never timed)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from llmgateway.v1 import models_pb2

from service.routing.balancer import Balancer
from tests.fakes.http_server import FakeHttpServer
from tests.fakes.tunable import TunableOpenAI
from tests.support import Gateway, chat_request, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{consecutive_failures: 2, cool_down: 120s}}}}
providers:
  - {{name: a, base_url: "{a}/v1", openai_compatible: {{}}}}
  - {{name: b, base_url: "{b}/v1", openai_compatible: {{}}}}
models:
  - alias: pooled
    balance: {strategy}
    deployments:
      - {{provider: a, upstream_model: m-a, pricing: {{input_per_million: 0.1, output_per_million: 0.2}}}}
      - {{provider: b, upstream_model: m-b, pricing: {{input_per_million: 1, output_per_million: 2}}}}
  - alias: a-only
    deployments: [{{provider: a, upstream_model: m-a}}]
"""


class Pair:
    def __init__(self, gateway: Gateway, a: TunableOpenAI, b: TunableOpenAI,
                 sa: FakeHttpServer, sb: FakeHttpServer) -> None:  # fmt: skip
        self.gateway, self.a, self.b, self.sa, self.sb = gateway, a, b, sa, sb

    def counts(self) -> tuple[int, int]:
        return len(self.sa.requests), len(self.sb.requests)

    async def calls(self, n: int, stream: bool = False) -> tuple[int, int]:
        """Makes n calls; how many requests each fake got meanwhile."""
        before = self.counts()
        for i in range(n):
            request = chat_request(f"call {i}", model="pooled")
            if stream:
                chunks = [c async for c in self.gateway.stub.StreamChat(request, timeout=30)]
                assert chunks[-1].usage.total_tokens > 0
            else:
                await self.gateway.stub.Chat(request, timeout=30)
        after = self.counts()
        return after[0] - before[0], after[1] - before[1]


async def pair(strategy: str, delay_a: float = 0.0, delay_b: float = 0.0) -> AsyncIterator[Pair]:
    a, b = TunableOpenAI(delay_a), TunableOpenAI(delay_b)
    async with FakeHttpServer(a.handle) as sa, FakeHttpServer(b.handle) as sb:
        text = CONFIG.format(a=sa.url, b=sb.url, strategy=strategy)
        async with running_gateway(text) as gateway:
            gateway.server.router.balancer = Balancer(random.Random(20261204).random)
            yield Pair(gateway, a, b, sa, sb)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_lowest_latency_prefers_the_faster_and_follows_a_slowdown(stream: bool) -> None:
    async for p in pair("BALANCE_STRATEGY_LOWEST_LATENCY", delay_a=0.0, delay_b=0.2):
        to_a, to_b = await p.calls(100, stream)
        assert to_a >= 80, (to_a, to_b)
        assert to_b >= 1, "each deployment is measured (and explored now and then)"
        # a slows down, b speeds up: within a few calls the traffic moves.
        p.a.delay, p.b.delay = 0.6, 0.0
        await p.calls(15, stream)
        to_a, to_b = await p.calls(50, stream)
        assert to_b >= 40, (to_a, to_b)


async def test_lowest_latency_moves_away_from_a_failing_deployment() -> None:
    async for p in pair("BALANCE_STRATEGY_LOWEST_LATENCY", delay_a=0.0, delay_b=0.2):
        to_a, _ = await p.calls(30)
        assert to_a >= 24
        p.a.fail_status = 500  # each call fails over to b and still succeeds
        before_a = p.counts()[0]
        to_a, to_b = await p.calls(30)
        assert to_b == 30, "b served every call"
        assert p.counts()[0] - before_a <= 2, "a is left once its circuit opens"


async def test_lowest_cost_prefers_the_cheaper_and_spills_when_it_fails() -> None:
    async for p in pair("BALANCE_STRATEGY_LOWEST_COST"):
        reply = await p.gateway.stub.Chat(chat_request("price me", model="pooled"), timeout=10)
        assert reply.route.provider == "a"
        # The deployment's own prices: (2 input + 2 output tokens) at 0.1 and 0.2 per 1M.
        assert reply.usage.cost_usd == pytest.approx(
            (reply.usage.input_tokens * 0.1 + reply.usage.output_tokens * 0.2) / 1e6
        )
        to_a, to_b = await p.calls(100)
        assert to_a >= 80, (to_a, to_b)
        p.a.fail_status = 503
        await p.calls(2)  # two failures open a's circuit; both calls fail over to b
        to_a, to_b = await p.calls(20)
        assert (to_a, to_b) == (0, 20), "only deployments that can take a call are chosen"
        listed = await p.gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        by_alias = {m.alias: m for m in listed.models}
        assert by_alias["a-only"].unavailable
        assert list(by_alias["a-only"].unavailable_reasons) == ["CIRCUIT_OPEN"]
        assert not by_alias["pooled"].unavailable and not by_alias["pooled"].unavailable_reasons
        reply = await p.gateway.stub.Chat(chat_request("price me", model="pooled"), timeout=10)
        assert reply.route.provider == "b"
        assert reply.usage.cost_usd == pytest.approx(
            (reply.usage.input_tokens * 1 + reply.usage.output_tokens * 2) / 1e6
        )
