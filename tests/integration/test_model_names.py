"""Upstream model names named directly by callers (`provider/model`) cannot change the
URL a request goes to, nor carry anything outside their provider kind's rule: every
provider kind refuses path steps, separators, encoded dots, query and fragment marks,
line breaks and over-long names with INVALID_ARGUMENT, and no request reaches the
upstream. Valid names still reach it, in the path they belong in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import chat_pb2, embed_pb2

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.support import Gateway, chat_request, details_of, running_gateway

KEY = "sk-names-test-key"
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
allow_direct_model_addressing: true
providers:
  - {{name: oai, api_key_env: NAMES_KEY, base_url: "{url}/v1", openai: {{}}}}
  - {{name: compat, api_key_env: NAMES_KEY, base_url: "{url}/v1", openai_compatible: {{}}}}
  - {{name: azure, api_key_env: NAMES_KEY, base_url: "{url}", azure_openai: {{}}}}
  - {{name: azure-v1, api_key_env: NAMES_KEY, base_url: "{url}", azure_openai: {{v1_api: true}}}}
  - {{name: claude, api_key_env: NAMES_KEY, base_url: "{url}/v1", anthropic: {{}}}}
  - {{name: gem, api_key_env: NAMES_KEY, base_url: "{url}/v1beta", gemini: {{}}}}
  - {{name: local, base_url: "{url}", ollama: {{}}}}
  - {{name: mock, mock: {{}}}}
  - {{name: shout, custom: {{class_path: "tests.fakes.custom_provider:ShoutingProvider"}}}}
models:
  - {{alias: m, provider: mock, upstream_model: mock-1}}
"""
PROVIDERS = ("oai", "compat", "azure", "azure-v1", "claude", "gem", "local", "mock", "shout")
# Kinds whose names have no namespaces: a "/" inside the model part is refused too.
FLAT = ("oai", "azure", "azure-v1", "claude", "gem")

HOSTILE = {
    "dot-dot": "..",
    "walk": "../../../admin/secret",
    "walk-inside": "gemini-2.5-flash/../../admin",
    "leading-slash": "/admin/secret",
    "empty-segment": "org//model",
    "dot-segment": "org/./model",
    "encoded-dots": "%2e%2e",
    "encoded-walk": "%2e%2e%2f%2e%2e%2fadmin",
    "encoded-slash": "a%2Fb",
    "query": "gpt-4o?key=stolen",
    "fragment": "gpt-4o#frag",
    "crlf": "gpt-4o\r\nX-Injected: 1",
    "lf": "gpt-4o\n",
    "space": "gpt 4o",
    "over-long": "m" * 300,
    "over-long-with-dots": "a." * 200,
    "empty": "",
}


@dataclass
class Env:
    gateway: Gateway
    upstream: FakeHttpServer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def env() -> AsyncIterator[Env]:
    def not_found(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json({"error": {"message": "no such thing"}}, 404)

    async with FakeHttpServer(not_found) as upstream:
        config = CONFIG.format(url=upstream.url)
        async with running_gateway(config, {"NAMES_KEY": KEY}) as gateway:
            yield Env(gateway, upstream)


async def _refusal(gateway: Gateway, rpc: str, model: str) -> grpc.aio.AioRpcError:
    stub = gateway.stub
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if rpc == "Chat":
            await stub.Chat(chat_request("hi", model=model), timeout=5)
        elif rpc == "StreamChat":
            async for _ in stub.StreamChat(chat_request("hi", model=model), timeout=5):
                pass
        else:
            await stub.Embed(embed_pb2.EmbedRequest(model=model, inputs=["hi"]), timeout=5)
    return caught.value


def _cases() -> list[tuple[str, str]]:
    cases = [(provider, name) for provider in PROVIDERS for name in HOSTILE]
    cases += [(provider, "flat-slash") for provider in FLAT]
    return cases


@pytest.mark.parametrize(("provider", "case"), _cases())
async def test_a_hostile_direct_model_name_is_refused_before_any_upstream_request(
    env: Env, provider: str, case: str
) -> None:
    name = "org/model" if case == "flat-slash" else HOSTILE[case]
    before = len(env.upstream.requests)
    for rpc in ("Chat", "StreamChat", "Embed"):
        error = await _refusal(env.gateway, rpc, f"{provider}/{name}")
        details = details_of(error)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (rpc, details.message)
        assert details.error_info.reason == "INVALID_REQUEST"
        assert list(details.violations) == ["model"]
        assert details.error_info.metadata["provider"] == provider
        # The message names the rule, never the caller's name (it may hold anything).
        assert "\n" not in details.message and "admin" not in details.message
    assert len(env.upstream.requests) == before  # not one request went upstream


async def test_the_walk_from_the_report_no_longer_reaches_the_upstream(env: Env) -> None:
    # The gateway used to POST /admin/secret:generateContent with its own API key.
    error = await _refusal(env.gateway, "Chat", "gem/../../../admin/secret")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in env.upstream.requests if "admin" in r.target]


@pytest.mark.parametrize(
    ("model", "target", "body_model"),
    [
        ("gem/gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent", None),
        ("gem/tunedModels/my-tune-1", "/v1beta/tunedModels/my-tune-1:generateContent", None),
        (
            "azure/gpt-4o.eu_1",
            "/openai/deployments/gpt-4o.eu_1/chat/completions?api-version=2024-10-21",
            None,
        ),
        ("azure-v1/gpt-4o.eu_1", "/openai/v1/chat/completions", "gpt-4o.eu_1"),
        ("oai/ft:gpt-4o-mini:org::abc", "/v1/chat/completions", "ft:gpt-4o-mini:org::abc"),
        ("claude/claude-sonnet-4-5", "/v1/messages", "claude-sonnet-4-5"),
        ("compat/Qwen/Qwen2.5-7B-Instruct", "/v1/chat/completions", "Qwen/Qwen2.5-7B-Instruct"),
        ("local/hf.co/org/repo:Q4_K_M", "/api/chat", "hf.co/org/repo:Q4_K_M"),
    ],
)
async def test_a_valid_direct_model_name_reaches_its_own_path(
    env: Env, model: str, target: str, body_model: str | None
) -> None:
    before = len(env.upstream.requests)
    with pytest.raises(grpc.aio.AioRpcError):  # the upstream answers 404 to everything
        await env.gateway.stub.Chat(chat_request("hi", model=model), timeout=5)
    sent = env.upstream.requests[before:]
    assert [r.target for r in sent] == [target]
    if body_model is not None:
        assert sent[0].json()["model"] == body_model
    env.upstream.requests.clear()


async def test_mock_and_custom_providers_serve_valid_direct_names(env: Env) -> None:
    for model in ("mock/mock-echo-2", "shout/shout-1"):
        response = await env.gateway.stub.Chat(chat_request("hi", model=model), timeout=5)
        assert response.finish_reason == chat_pb2.FINISH_REASON_STOP
        assert response.route.upstream_model == model.split("/", 1)[1]
