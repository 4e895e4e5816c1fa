"""The registry built from config: each provider kind's default capabilities and
context window as ListModels reports them, embedding aliases, and a shutdown that
closes every provider even when one fails to."""

from __future__ import annotations

import pytest
from llmgateway.v1 import chat_pb2, embed_pb2

from service.config import parse_config
from service.providers.base import CallContext, Deployment, Provider
from service.providers.registry import Registry

KEYS = {"K": "sk-unit"}
CONFIG = """
auth: {disabled: true}
providers:
  - {name: openai, api_key_env: K, openai: {}}
  - {name: anthropic, api_key_env: K, anthropic: {}}
  - {name: gemini, api_key_env: K, gemini: {}}
  - {name: local, base_url: "http://127.0.0.1:9/v1", openai_compatible: {}}
  - {name: ollama, base_url: "http://127.0.0.1:9", ollama: {}}
models:
  - {alias: gpt, provider: openai}
  - {alias: claude, provider: anthropic}
  - {alias: flash, provider: gemini}
  - {alias: llama, provider: local}
  - {alias: qwen, provider: ollama}
  - {alias: embed, provider: openai, capabilities: {embeddings: true}}
  - {alias: embed-sized, provider: openai, context_window: 8191, capabilities: {embeddings: true}}
  - {alias: llama-vision, provider: local, context_window: 32768, capabilities: {vision: true}}
"""


@pytest.fixture
async def registry() -> Registry:
    built = Registry.from_config(parse_config(CONFIG, KEYS).config, KEYS)
    yield built  # type: ignore[misc]
    await built.aclose()


def caps(registry: Registry, alias: str) -> tuple[bool, bool, bool, bool, bool, int]:
    d = registry.resolve(alias)
    c = d.capabilities
    return (c.streaming, c.tools, c.vision, c.json_output, c.embeddings, d.context_window)


async def test_each_kind_reports_its_defaults(registry: Registry) -> None:
    assert caps(registry, "gpt") == (True, True, True, True, False, 128_000)
    assert caps(registry, "claude")[:5] == (True, True, True, True, False)
    assert caps(registry, "claude")[5] == 200_000
    assert caps(registry, "flash")[5] == 1_048_576
    # An OpenAI-compatible server: no vision unless the alias says so; its window is
    # whatever the server was started with.
    assert caps(registry, "llama") == (True, True, False, True, False, 0)
    assert caps(registry, "llama-vision") == (True, True, True, True, False, 32768)


async def test_embedding_aliases_do_not_inherit_the_chat_window(registry: Registry) -> None:
    assert caps(registry, "embed") == (False, False, False, False, True, 0)
    assert caps(registry, "embed-sized")[5] == 8191


class _Closing(Provider):
    def __init__(self, name: str, fails: bool, closed: list[str]) -> None:
        super().__init__(name)
        self._fails = fails
        self._closed = closed

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        raise NotImplementedError

    def stream_chat(self, request, deployment, ctx):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        self._closed.append(self.name)
        if self._fails:
            raise RuntimeError("cannot close")


async def test_shutdown_closes_every_provider_even_after_a_failure() -> None:
    closed: list[str] = []
    providers: dict[str, Provider] = {
        "first": _Closing("first", True, closed),
        "second": _Closing("second", False, closed),
    }
    await Registry(providers, {}, allow_direct_addressing=False).aclose()
    assert closed == ["first", "second"]
