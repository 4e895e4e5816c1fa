"""Usage of calls whose upstream reports none (an OpenAI-compatible server that, like
llama.cpp, ignores stream_options and sends no `usage`), through the running gateway:
the gateway's estimate, marked `estimated`, is what the caller sees, what cost is priced
from, what the caller's budget is charged and what the metrics count. An upstream that
reports usage keeps its exact numbers, unmarked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from llmgateway.v1 import chat_pb2, route_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, details_of, running_gateway

# $1 a token in, $2 a token out: the cost shows the counts it was priced from.
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
auth:
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
limits:
  subject: {{budget_usd: 10}}
providers:
  - {{name: quiet, base_url: "{quiet}/v1", openai_compatible: {{}}}}
  - {{name: counted, base_url: "{counted}/v1", openai_compatible: {{}}}}
models:
  - alias: local
    provider: quiet
    upstream_model: qwen2.5-7b
    pricing: {{input_per_million: 1000000, output_per_million: 2000000}}
  - {{alias: local-free, provider: quiet, upstream_model: qwen2.5-7b}}
  - alias: exact
    provider: counted
    upstream_model: qwen2.5-7b
    pricing: {{input_per_million: 1000000, output_per_million: 2000000}}
"""
TEXT = "one two three"  # echoed back by the fake
# The estimate: 13 bytes of UTF-8 are 4 tokens, plus 4 for the message's role markers.
ESTIMATED = (8, 4)
# What the counting fake reports: words in, words out.
EXACT = (3, 3)


@dataclass
class Env:
    gateway: Gateway
    quiet: FakeHttpServer
    counted: FakeHttpServer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def env() -> AsyncIterator[Env]:
    quiet = FakeHttpServer(OpenAIFake(OpenAIFakeConfig(auth="none", reports_usage=False)).handle)
    counted = FakeHttpServer(OpenAIFake(OpenAIFakeConfig(auth="none")).handle)
    async with quiet, counted:
        config = CONFIG.format(quiet=quiet.url, counted=counted.url)
        async with running_gateway(config, {"GW_SECRET": HS_SECRET}) as gateway:
            yield Env(gateway, quiet, counted)


def bearer(sub: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Bearer " + sign(claims("dev", sub=sub), HS_SECRET, "HS256")),)


async def _stream(env: Env, model: str, sub: str) -> list[chat_pb2.StreamChatResponse]:
    request = chat_request(TEXT, model=model)
    return [c async for c in env.gateway.stub.StreamChat(request, metadata=bearer(sub), timeout=5)]


def _counts(usage: route_pb2.Usage) -> tuple[int, int]:
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    return (usage.input_tokens, usage.output_tokens)


async def test_a_stream_without_upstream_usage_ends_with_a_marked_estimate(env: Env) -> None:
    chunks = await _stream(env, "local", "stream-estimate")
    assert "".join(c.text_delta for c in chunks) == TEXT
    # The gateway asked for usage; the upstream ignored it.
    assert env.quiet.requests[-1].json()["stream_options"] == {"include_usage": True}
    usage = chunks[-1].usage
    assert _counts(usage) == ESTIMATED
    assert usage.estimated
    assert usage.cost_usd == pytest.approx(8 * 1 + 4 * 2)
    assert not any(c.usage.estimated for c in chunks[:-1])


async def test_a_whole_answer_without_upstream_usage_carries_a_marked_estimate(
    env: Env,
) -> None:
    reply = await env.gateway.stub.Chat(
        chat_request(TEXT, model="local"), metadata=bearer("unary-estimate"), timeout=5
    )
    assert _counts(reply.usage) == ESTIMATED
    assert reply.usage.estimated
    assert reply.usage.cost_usd == pytest.approx(16.0)


async def test_an_unpriced_estimate_is_still_counted_and_has_no_cost(env: Env) -> None:
    chunks = await _stream(env, "local-free", "unpriced")
    usage = chunks[-1].usage
    assert (_counts(usage), usage.estimated, usage.HasField("cost_usd")) == (
        ESTIMATED,
        True,
        False,
    )


async def test_reported_usage_is_kept_exactly_and_not_marked(env: Env) -> None:
    chunks = await _stream(env, "exact", "exact-stream")
    usage = chunks[-1].usage
    assert (_counts(usage), usage.estimated) == (EXACT, False)
    assert usage.cost_usd == pytest.approx(3 * 1 + 3 * 2)
    reply = await env.gateway.stub.Chat(
        chat_request(TEXT, model="exact"), metadata=bearer("exact-unary"), timeout=5
    )
    assert (_counts(reply.usage), reply.usage.estimated) == (EXACT, False)


async def test_the_budget_is_charged_the_estimated_cost(env: Env) -> None:
    # $16 estimated against a $10 budget: the next call is refused. Counted as zeros,
    # the stream would have been free and the budget never reached.
    chunks = await _stream(env, "local", "budgeted")
    assert chunks[-1].usage.cost_usd == pytest.approx(16.0)
    before = len(env.quiet.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(
            chat_request(TEXT, model="local"), metadata=bearer("budgeted"), timeout=5
        )
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )
    assert len(env.quiet.requests) == before


async def _scrape(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{gateway.server.metrics_port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_the_estimate(env: Env) -> None:
    before = await _scrape(env.gateway)
    await _stream(env, "local", "metrics")
    after = await _scrape(env.gateway)

    def grew(name: str, **labels: Any) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    tokens = "llm_gateway_tokens_total"
    assert grew(tokens, model="local", direction="input") == ESTIMATED[0]
    assert grew(tokens, model="local", direction="output") == ESTIMATED[1]
    assert grew("llm_gateway_cost_usd_total", model="local") == pytest.approx(16.0)
