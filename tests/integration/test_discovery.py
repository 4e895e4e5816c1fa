"""Model discovery through the running gateway: the OpenAI, Ollama and Gemini fakes
answer their model-list endpoints in the real wire format; the lists appear in
ListModels as "provider/model" (with direct addressing), refreshed in the background;
a failed refresh is counted and the last list kept; calls never wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from llmgateway.v1 import models_pb2

from service.config import ConfigError, parse_config
from service.server import GatewayServer
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.http_server import FakeHttpServer, FakeResponse
from tests.fakes.ollama_fake import OllamaFake
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import chat_request, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
allow_direct_model_addressing: {direct}
routing: {{retry: {{max_attempts: 1}}}}
providers:
  - {{name: oai, api_key_env: OAI_KEY, base_url: "{oai}/v1", openai: {{}}, discovery: {{refresh: 3600s}}}}
  - {{name: local, base_url: "{ollama}", ollama: {{}}, discovery: {{}}}}
  - {{name: gem, api_key_env: GEM_KEY, base_url: "{gemini}", gemini: {{}}, discovery: {{refresh: 3600s}}}}
  - {{name: plain, mock: {{}}}}
models:
  - {{alias: mock, provider: plain}}
"""
ENV = {"OAI_KEY": "sk-test", "GEM_KEY": "gemini-test-key"}


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # at most 10 s: a bound for loaded machines, not a wait
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def first_refreshes_done(server: GatewayServer) -> Callable[[], bool]:
    return lambda: all(s.refreshes + s.failures >= 1 for s in server.discovery.state.values())


async def test_discovered_models_are_listed_as_provider_slash_model() -> None:
    oai = OpenAIFake(OpenAIFakeConfig(models=("gpt-4o-mini", "o3")))
    async with (
        FakeHttpServer(oai.handle) as oai_server,
        OllamaFake(models=("llama3.2", "nomic-embed-text")) as ollama,
        GeminiFake() as gemini,
    ):
        text = CONFIG.format(
            direct="true", oai=oai_server.url, ollama=ollama.url, gemini=gemini.base_url
        )
        async with running_gateway(text, ENV) as gateway:
            await until(first_refreshes_done(gateway.server), "the first refreshes")
            listed = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
            names = [m.alias for m in listed.models]
            assert names == sorted(names)
            discovered = {m.alias: m for m in listed.models if m.discovered}
            assert set(discovered) == {
                "oai/gpt-4o-mini",
                "oai/o3",
                "local/llama3.2:latest",
                "local/nomic-embed-text:latest",
                "gem/gemini-2.5-flash",
                "gem/text-embedding-004",
            }
            o3 = discovered["oai/o3"]
            assert (o3.provider, o3.provider_type, o3.upstream_model) == ("oai", "openai", "o3")
            assert not o3.unavailable
            configured = next(m for m in listed.models if m.alias == "mock")
            assert not configured.discovered
            only = await gateway.stub.ListModels(
                models_pb2.ListModelsRequest(provider="local"), timeout=5
            )
            assert [m.alias for m in only.models] == [
                "local/llama3.2:latest",
                "local/nomic-embed-text:latest",
            ]
            # The listed name is a model callers can use.
            reply = await gateway.stub.Chat(chat_request("hi", model="oai/o3"), timeout=10)
            assert reply.route.upstream_model == "o3"
            stats = await gateway.stub.GetProviderStats(
                models_pb2.GetProviderStatsRequest(provider="gem"), timeout=5
            )
            assert stats.providers[0].discovered_models == 2
            assert stats.providers[0].discovery_failures == 0
    models_requests = [r for r in oai_server.requests if r.path == "/v1/models"]
    assert models_requests and models_requests[0].method == "GET"
    assert models_requests[0].headers["authorization"] == "Bearer sk-test"


async def test_a_failed_refresh_is_counted_and_the_last_list_kept() -> None:
    oai = OpenAIFake()
    async with (
        FakeHttpServer(oai.handle) as oai_server,
        OllamaFake() as ollama,
        GeminiFake() as gemini,
    ):
        text = CONFIG.format(
            direct="true", oai=oai_server.url, ollama=ollama.url, gemini=gemini.base_url
        )
        async with running_gateway(text, ENV) as gateway:
            discovery = gateway.server.discovery
            await until(first_refreshes_done(gateway.server), "the first refreshes")
            assert discovery.state["oai"].refreshes == 1
            oai_server.script(FakeResponse.raw(b"<html>bad gateway</html>", status=502))
            await discovery.refresh("oai")
            assert discovery.state["oai"].failures == 1
            listed = await gateway.stub.ListModels(
                models_pb2.ListModelsRequest(provider="oai"), timeout=5
            )
            assert [m.alias for m in listed.models] == [
                "oai/gpt-4o-mini",
                "oai/text-embedding-3-small",
            ]
            stats = await gateway.stub.GetProviderStats(
                models_pb2.GetProviderStatsRequest(provider="oai"), timeout=5
            )
            assert stats.providers[0].discovery_failures == 1
            assert stats.providers[0].discovered_models == 2


async def test_a_hanging_model_list_blocks_no_call() -> None:
    oai = OpenAIFake()
    async with (
        FakeHttpServer(oai.handle) as oai_server,
        OllamaFake() as ollama,
        GeminiFake() as gemini,
    ):
        oai_server.script(FakeResponse(hang=True))  # the first request: the model list
        text = CONFIG.format(
            direct="true", oai=oai_server.url, ollama=ollama.url, gemini=gemini.base_url
        )
        async with running_gateway(text, ENV) as gateway:
            await until(lambda: len(oai_server.requests) == 1, "the model list was asked for")
            assert gateway.server.discovery.state["oai"].refreshes == 0
            reply = await gateway.stub.Chat(chat_request("hi", model="oai/gpt-4o"), timeout=10)
            assert reply.route.provider == "oai"
            listed = await gateway.stub.ListModels(
                models_pb2.ListModelsRequest(provider="oai"), timeout=5
            )
            assert list(listed.models) == [], "nothing discovered yet, and no wait for it"


async def test_without_direct_addressing_nothing_discovered_is_listed() -> None:
    async with (
        FakeHttpServer(OpenAIFake().handle) as oai_server,
        OllamaFake() as ollama,
        GeminiFake() as gemini,
    ):
        text = CONFIG.format(
            direct="false", oai=oai_server.url, ollama=ollama.url, gemini=gemini.base_url
        )
        async with running_gateway(text, ENV) as gateway:
            await until(first_refreshes_done(gateway.server), "the first refreshes")
            assert gateway.server.discovery.models("oai")
            listed = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
            assert [m.alias for m in listed.models] == ["mock"]


def test_discovery_config_is_checked() -> None:
    base = """
providers:
  - {name: a, anthropic: {}, api_key_env: K, discovery: {}}
models: [{alias: m, provider: a}]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(base, {"K": "x"})
    assert caught.value.path == "providers[0].discovery"
    fast = base.replace("anthropic: {}", "openai: {}").replace("{}}", "{refresh: 0.1s}}")
    with pytest.raises(ConfigError) as caught:
        parse_config(fast, {"K": "x"})
    assert caught.value.path == "providers[0].discovery.refresh"
