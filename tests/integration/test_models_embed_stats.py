"""Embed, ListModels and GetProviderStats."""

from __future__ import annotations

import math

import grpc
import pytest
from llmgateway.v1 import embed_pb2, models_pb2

from tests.support import BASE_CONFIG, Gateway, chat_request, details_of, running_gateway


async def test_embeddings_are_deterministic_unit_vectors(gateway: Gateway) -> None:
    request = embed_pb2.EmbedRequest(
        model="mock-embed", inputs=["alpha beta", "gamma", "alpha beta"]
    )
    response = await gateway.stub.Embed(request, timeout=5)
    assert response.model == "mock-embed"
    assert [e.index for e in response.embeddings] == [0, 1, 2]
    vectors = [list(e.values) for e in response.embeddings]
    assert all(len(v) == 16 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert response.usage.input_tokens == 5  # words: 2 + 1 + 2
    assert response.route.provider == "mock" and response.route.upstream_model == "mock-embed-1"
    again = await gateway.stub.Embed(request, timeout=5)
    assert [list(e.values) for e in again.embeddings] == vectors


async def test_embedding_dimensions_from_config_and_request(gateway: Gateway) -> None:
    configured = await gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="scripted-embed", inputs=["x"]), timeout=5
    )
    assert len(configured.embeddings[0].values) == 8
    asked = await gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="scripted-embed", inputs=["x"], dimensions=40), timeout=5
    )
    assert len(asked.embeddings[0].values) == 40


async def test_embed_on_a_chat_model_is_refused(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Embed(embed_pb2.EmbedRequest(model="mock", inputs=["x"]), timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"


async def test_list_models_reports_aliases_with_capabilities(gateway: Gateway) -> None:
    response = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
    by_alias = {m.alias: m for m in response.models}
    assert list(by_alias) == sorted(by_alias)
    assert set(by_alias) == {"mock", "mock-embed", "scripted", "scripted-embed", "plain"}
    mock = by_alias["mock"]
    assert (mock.provider, mock.provider_type, mock.upstream_model) == (
        "mock",
        "mock",
        "mock-echo-1",
    )
    assert mock.context_window == 32768
    caps = mock.capabilities
    assert (caps.streaming, caps.tools, caps.vision, caps.json_output, caps.embeddings) == (
        True,
        True,
        True,
        True,
        False,
    )
    embed = by_alias["mock-embed"].capabilities
    assert (embed.embeddings, embed.streaming, embed.tools) == (True, False, False)
    plain = by_alias["plain"].capabilities
    assert (plain.streaming, plain.tools, plain.vision, plain.json_output) == (False,) * 4
    assert by_alias["scripted"].upstream_model == "scripted", "defaults to the alias"
    only = await gateway.stub.ListModels(
        models_pb2.ListModelsRequest(provider="scripted"), timeout=5
    )
    assert [m.alias for m in only.models] == ["scripted", "scripted-embed"]


async def test_provider_stats_count_attempts() -> None:
    async with running_gateway(BASE_CONFIG) as gateway:
        stats = await gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5)
        assert [(p.provider, p.requests) for p in stats.providers] == [("mock", 0), ("scripted", 0)]
        for _ in range(3):
            await gateway.stub.Chat(chat_request(), timeout=5)
        _ = [c async for c in gateway.stub.StreamChat(chat_request(), timeout=5)]
        with pytest.raises(grpc.aio.AioRpcError):
            await gateway.stub.Chat(
                chat_request(), metadata=(("x-mock-fail-status", "500"),), timeout=5
            )
        with pytest.raises(grpc.aio.AioRpcError):  # refused before the provider: not counted
            await gateway.stub.Chat(chat_request(model="nope"), timeout=5)
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(provider="mock"), timeout=5
        )
        [mock] = stats.providers
        assert (mock.provider_type, mock.requests, mock.successes, mock.failures) == (
            "mock",
            5,
            4,
            1,
        )
        assert mock.cancelled == 0
        assert mock.average_latency.ToNanoseconds() > 0


async def test_embeddings_are_priced_from_their_input_tokens() -> None:
    config = BASE_CONFIG + (
        "  - alias: priced-embed\n    provider: mock\n    upstream_model: mock-embed-1\n"
        "    capabilities: {embeddings: true}\n"
        "    pricing: {input_per_million: 0.02, output_per_million: 0}\n"
    )
    async with running_gateway(config) as gateway:
        response = await gateway.stub.Embed(
            embed_pb2.EmbedRequest(model="priced-embed", inputs=["alpha beta", "gamma"]),
            timeout=5,
        )
        assert response.usage.input_tokens == 3
        assert response.usage.cost_usd == pytest.approx(3 * 0.02 / 1_000_000)
        unpriced = await gateway.stub.Embed(
            embed_pb2.EmbedRequest(model="mock-embed", inputs=["alpha beta"]), timeout=5
        )
        assert not unpriced.usage.HasField("cost_usd")
