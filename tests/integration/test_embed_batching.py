"""Embed batching through the running gateway against the OpenAI fake, whose vectors
are a hash of each input text: many concurrent callers share few upstream requests
and each gets exactly its own vectors, in order, with its own share of the usage; an
upstream error reaches every caller of the batch; a caller that leaves, or cannot
wait, is not held by the batch."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from llmgateway.v1 import embed_pb2, models_pb2

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.openai_fake import embedding_vector
from tests.fakes.tunable import TunableOpenAI
from tests.support import details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{consecutive_failures: 100}}}}
providers:
  - {{name: up, base_url: "{url}/v1", openai_compatible: {{}}}}
models:
  - alias: embed
    provider: up
    upstream_model: e-1
    capabilities: {{embeddings: true}}
    pricing: {{input_per_million: 1, output_per_million: 0}}
    batch: {{window: {window}, max_inputs: {max_inputs}}}
"""


def embed_requests(fake: FakeHttpServer) -> list[dict[str, Any]]:
    return [r.json() for r in fake.requests if r.path.endswith("/embeddings")]


def words(text: str) -> int:
    return len(text.split())


async def wait_until(condition: Any, what: str) -> None:
    for _ in range(1000):  # at most 10 s: a bound for loaded machines, not a wait
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def request_of(i: int) -> embed_pb2.EmbedRequest:
    inputs = [f"caller {i} says {word}" for word in ("alpha", "beta gamma", "delta")[: 1 + i % 3]]
    request = embed_pb2.EmbedRequest(model="embed", inputs=inputs)
    if i % 2:
        request.dimensions = 6
    return request


async def test_64_concurrent_callers_share_few_upstream_requests_and_get_their_own() -> None:
    fake = TunableOpenAI()
    async with FakeHttpServer(fake.handle) as server:
        config = CONFIG.format(url=server.url, window="1s", max_inputs=16)
        async with running_gateway(config) as gateway:
            requests = [request_of(i) for i in range(64)]
            replies = await asyncio.gather(
                *(gateway.stub.Embed(request, timeout=30) for request in requests)
            )
    upstream = embed_requests(server)
    assert len(upstream) <= 16, f"{len(upstream)} upstream requests for 64 calls"
    assert sum(len(body["input"]) for body in upstream) == sum(len(r.inputs) for r in requests)
    for body in upstream:
        assert len(body["input"]) <= 16, "max_inputs caps a batch"
        # Callers that asked for other dimensions are never mixed in.
        asked = {text.split()[1] for text in body["input"]}
        odd = {int(caller) % 2 for caller in asked}
        assert odd == {1 if "dimensions" in body else 0}, "one kind of caller per batch"
    for request, reply in zip(requests, replies, strict=True):
        dimensions = request.dimensions if request.HasField("dimensions") else 4
        assert [e.index for e in reply.embeddings] == list(range(len(request.inputs)))
        assert [list(e.values) for e in reply.embeddings] == [
            pytest.approx(embedding_vector(text, dimensions), abs=1e-6) for text in request.inputs
        ], "each caller gets exactly its own vectors, in order"
        assert reply.usage.input_tokens > 0
        assert reply.usage.total_tokens == reply.usage.input_tokens
    reported = sum(words(text) for body in upstream for text in body["input"])
    assert sum(reply.usage.input_tokens for reply in replies) == reported, "shares add up"


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, grpc.StatusCode.UNAVAILABLE), (429, grpc.StatusCode.RESOURCE_EXHAUSTED)],
)
async def test_an_upstream_error_reaches_every_caller_of_the_batch(
    status: int, code: grpc.StatusCode
) -> None:
    fake = TunableOpenAI()
    fake.fail_status = status
    async with FakeHttpServer(fake.handle) as server:
        config = CONFIG.format(url=server.url, window="5s", max_inputs=8)
        async with running_gateway(config) as gateway:
            calls = [
                gateway.stub.Embed(
                    embed_pb2.EmbedRequest(model="embed", inputs=[f"t{i}"]), timeout=30
                )
                for i in range(8)
            ]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            stats = await gateway.stub.GetProviderStats(
                models_pb2.GetProviderStatsRequest(provider="up"), timeout=5
            )
    assert len(embed_requests(server)) == 1, "eight inputs fill one batch"
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        details = details_of(outcome)
        assert details.code == code
        assert details.error_info.metadata["upstreamStatus"] == str(status)
    [deployment] = stats.providers[0].deployments
    assert deployment.consecutive_failures == 1, "one upstream failure counts once"


async def test_a_caller_that_leaves_or_cannot_wait_is_not_held_by_the_batch() -> None:
    fake = TunableOpenAI()
    async with FakeHttpServer(fake.handle) as server:
        config = CONFIG.format(url=server.url, window="2s", max_inputs=100)
        async with running_gateway(config) as gateway:
            batcher = gateway.server.router.batcher
            stay = asyncio.ensure_future(
                gateway.stub.Embed(
                    embed_pb2.EmbedRequest(model="embed", inputs=["stay"]), timeout=30
                )
            )
            leave = gateway.stub.Embed(
                embed_pb2.EmbedRequest(model="embed", inputs=["leave", "now"]), timeout=30
            )
            await wait_until(lambda: batcher.waiting() == 3, "both callers wait in the batch")
            leave.cancel()
            await wait_until(lambda: batcher.waiting() == 1, "the leaver's inputs are taken out")
            # 1 s is shorter than the window (2 s) and the reserve: sent alone, at once.
            short = await gateway.stub.Embed(
                embed_pb2.EmbedRequest(model="embed", inputs=["short"]), timeout=1
            )
            assert list(short.embeddings[0].values) == pytest.approx(embedding_vector("short", 4))
            assert [body["input"] for body in embed_requests(server)] == [["short"]]
            assert not stay.done(), "the batch still waits for its window"
            reply = await stay
    assert list(reply.embeddings[0].values) == pytest.approx(embedding_vector("stay", 4))
    assert [body["input"] for body in embed_requests(server)] == [["short"], ["stay"]]
    with pytest.raises(asyncio.CancelledError):
        await leave


async def test_a_batched_alias_must_embed_and_has_a_window() -> None:
    from service.config import ConfigError, parse_config

    base = CONFIG.format(url="http://127.0.0.1:9", window="0.005s", max_inputs=16)
    with pytest.raises(ConfigError) as caught:
        parse_config(base.replace("window: 0.005s", "window: 0s"), {})
    assert caught.value.path == "models[0].batch.window"
    with pytest.raises(ConfigError) as caught:
        parse_config(base.replace("capabilities: {embeddings: true}", "context_window: 10"), {})
    assert caught.value.path == "models[0].batch"
    with pytest.raises(ConfigError) as caught:
        parse_config(base.replace("max_inputs: 16", "max_inputs: 5000"), {})
    assert caught.value.path == "models[0].batch.max_inputs"
