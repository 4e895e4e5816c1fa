"""CountTokens, prompt-cache breakpoints and document parts through the running gateway,
against loopback fakes of Anthropic, Gemini and OpenAI(-compatible) servers that speak
their wire formats: exact counts where the provider counts, the estimate elsewhere with
no upstream call; cache writes and reads in usage and cost, in Chat and StreamChat;
documents sent in each provider's own form, and refused with no upstream request where
the model cannot read them."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from llmgateway.v1 import chat_pb2, content_pb2, models_pb2
from prometheus_client.parser import text_string_to_metric_families

from service.servicer import DEFAULT_METHOD_SCOPES
from tests.fakes.anthropic_fake import API_KEY, AnthropicFake
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.http_server import FakeHttpServer
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, details_of, running_gateway

COUNT = "/llmgateway.v1.ProviderService/CountTokens"
CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
metrics: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
audit: {{path: "{audit}"}}
providers:
  - {{name: claude, api_key_env: CTD_ANTHROPIC_KEY, base_url: "{anthropic}/v1", anthropic: {{}}}}
  - {{name: gemini, api_key_env: CTD_GEMINI_KEY, base_url: "{gemini}", gemini: {{}}}}
  - {{name: openai, api_key_env: CTD_OPENAI_KEY, base_url: "{openai}/v1", openai: {{}}}}
  - {{name: local, base_url: "{compat}/v1", openai_compatible: {{auth_scheme: AUTH_SCHEME_NONE}}}}
models:
  - alias: claude
    provider: claude
    upstream_model: claude-sonnet-4-5
    pricing: {{input_per_million: 3, output_per_million: 15, cached_input_per_million: 0.3, cache_write_input_per_million: 3.75}}
  - alias: gemini
    provider: gemini
    upstream_model: gemini-2.5-flash
    pricing: {{input_per_million: 0.3, output_per_million: 2.5, cached_input_per_million: 0.075}}
  - alias: gpt
    provider: openai
    upstream_model: gpt-4o-mini
    pricing: {{input_per_million: 0.15, output_per_million: 0.6, cached_input_per_million: 0.075}}
  - {{alias: local, provider: local, upstream_model: qwen2.5-7b}}
"""
ENVIRON = {"CTD_ANTHROPIC_KEY": API_KEY, "CTD_GEMINI_KEY": "gem-ctd", "CTD_OPENAI_KEY": "sk-ctd"}
PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
LONG = " ".join(f"word{i}" for i in range(60))


@dataclass
class World:
    gateway: Gateway
    anthropic: AnthropicFake
    gemini: GeminiFake
    openai: FakeHttpServer
    compat: FakeHttpServer


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(audit_path: Path) -> AsyncIterator[World]:
    openai = OpenAIFake(OpenAIFakeConfig(key="sk-ctd"))
    compat = OpenAIFake(OpenAIFakeConfig(auth="none"))
    async with (
        AnthropicFake() as anthropic,
        GeminiFake(api_key="gem-ctd") as gemini,
        FakeHttpServer(openai.handle) as openai_server,
        FakeHttpServer(compat.handle) as compat_server,
    ):
        config = CONFIG.format(
            audit=audit_path,
            anthropic=anthropic.url,
            gemini=gemini.base_url,
            openai=openai_server.url,
            compat=compat_server.url,
        )
        async with running_gateway(config, environ=ENVIRON) as gateway:
            yield World(gateway, anthropic, gemini, openai_server, compat_server)


def system(text: str, cache: bool = False) -> content_pb2.Message:
    message = content_pb2.Message(role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text=text)])
    if cache:
        message.cache_control.ttl = content_pb2.CACHE_TTL_ONE_HOUR
    return message


def user(*parts: content_pb2.Part) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_USER, parts=parts)


def text(value: str) -> content_pb2.Part:
    return content_pb2.Part(text=value)


def pdf(**fields: str) -> content_pb2.Part:
    return content_pb2.Part(document=content_pb2.Document(data=PDF, **fields))


# --- CountTokens ------------------------------------------------------------------------


async def test_anthropic_counts_with_its_endpoint(world: World) -> None:
    world.anthropic.reset()
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[system("Be brief."), user(text("one two three"))],
        generation_config=chat_pb2.GenerationConfig(temperature=0.5, max_output_tokens=99),
    )
    reply = await world.gateway.stub.CountTokens(request, timeout=10)
    assert reply.input_tokens == 5 and not reply.estimated
    assert (reply.route.provider, reply.route.upstream_model) == ("claude", "claude-sonnet-4-5")
    assert reply.route.attempts == 1 and reply.route.upstream_request_id.startswith("req_")
    [sent] = world.anthropic.requests
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.json() == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
    }


async def test_gemini_counts_with_its_endpoint(world: World) -> None:
    before = len(world.gemini.requests)
    request = chat_pb2.ChatRequest(
        model="gemini", messages=[system("Be brief."), user(text("one two three"))]
    )
    reply = await world.gateway.stub.CountTokens(request, timeout=10)
    assert reply.input_tokens == 5 and not reply.estimated
    [sent] = world.gemini.requests[before:]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert sent.json() == {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "one two three"}]}],
        }
    }


async def test_elsewhere_the_estimate_with_no_upstream_call(world: World) -> None:
    before = len(world.openai.requests)
    reply = await world.gateway.stub.CountTokens(chat_request("x" * 400, model="gpt"), timeout=10)
    assert reply.estimated and reply.input_tokens == 100 + 4  # 400 bytes / 4, message overhead
    assert reply.route.provider == "openai" and reply.route.attempts == 0
    assert len(world.openai.requests) == before


async def test_count_tokens_checks_the_request_like_chat(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.CountTokens(chat_pb2.ChatRequest(model="claude"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await world.gateway.stub.CountTokens(chat_request("hi", model="nope"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_count_tokens_needs_the_chat_scope() -> None:
    assert (
        DEFAULT_METHOD_SCOPES[COUNT]
        == DEFAULT_METHOD_SCOPES["/llmgateway.v1.ProviderService/Chat"]
        == "chat"
    )


async def test_count_tokens_is_measured(world: World) -> None:
    port = world.gateway.server.metrics_port
    await world.gateway.stub.CountTokens(chat_request("a b", model="gpt"), timeout=10)
    async with httpx.AsyncClient() as client:
        scraped = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    counts = {
        (sample.labels.get("method"), sample.labels.get("code")): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "llm_gateway_rpcs_total"
    }
    assert counts[(COUNT, "OK")] >= 1


# --- prompt caching -------------------------------------------------------------------------


async def test_anthropic_cache_write_then_read_in_chat_and_stream(world: World) -> None:
    world.anthropic.reset()
    request = chat_pb2.ChatRequest(
        model="claude", messages=[system(LONG, cache=True), user(text("first question"))]
    )
    first = await world.gateway.stub.Chat(request, timeout=10)
    sent = world.anthropic.requests[-1].json()
    assert sent["system"] == [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert first.usage.cache_write_input_tokens == 60 and first.usage.cached_input_tokens == 0
    assert first.usage.input_tokens == 62
    assert first.usage.cost_usd == pytest.approx(
        (2 * 3 + 60 * 3.75 + first.usage.output_tokens * 15) / 1e6
    )
    request.messages[1].parts[0].text = "second question"
    chunks = [c async for c in world.gateway.stub.StreamChat(request, timeout=10)]
    final = chunks[-1].usage
    assert final.cached_input_tokens == 60 and final.cache_write_input_tokens == 0
    assert final.input_tokens == 62
    assert final.cost_usd == pytest.approx((2 * 3 + 60 * 0.3 + final.output_tokens * 15) / 1e6)


async def test_anthropic_refuses_a_fifth_breakpoint_before_sending(world: World) -> None:
    world.anthropic.reset()
    parts = [
        content_pb2.Part(text=f"p{i}", cache_control=content_pb2.CacheControl()) for i in range(5)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_pb2.ChatRequest(model="claude", messages=[user(*parts)]), timeout=10
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.bad_request.field_violations] == [
        "messages[0].parts[4].cache_control"
    ]
    assert details.error_info.metadata["attempts"] == "0"
    assert world.anthropic.requests == []


async def test_gemini_implicit_cache_reads_in_chat_and_stream(world: World) -> None:
    turn = [system("Be brief."), user(text(LONG))]
    await world.gateway.stub.Chat(chat_pb2.ChatRequest(model="gemini", messages=turn), timeout=10)
    follow_up = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            *turn,
            content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=[text("ok")]),
            user(text("and then")),
        ],
    )
    reply = await world.gateway.stub.Chat(follow_up, timeout=10)
    assert reply.usage.cached_input_tokens == 62  # the first turn: system + the long text
    assert reply.usage.input_tokens == 65
    assert reply.usage.cost_usd == pytest.approx(
        (3 * 0.3 + 62 * 0.075 + reply.usage.output_tokens * 2.5) / 1e6
    )
    chunks = [c async for c in world.gateway.stub.StreamChat(follow_up, timeout=10)]
    assert chunks[-1].usage.cached_input_tokens == 62
    assert chunks[-1].usage.input_tokens == 65


async def test_openai_automatic_cache_reads_in_chat_and_stream(world: World) -> None:
    turn = [system("Be brief."), user(text(LONG))]
    await world.gateway.stub.Chat(chat_pb2.ChatRequest(model="gpt", messages=turn), timeout=10)
    follow_up = chat_pb2.ChatRequest(
        model="gpt",
        messages=[
            *turn,
            content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=[text("ok")]),
            user(text("and then")),
        ],
    )
    reply = await world.gateway.stub.Chat(follow_up, timeout=10)
    assert (reply.usage.cached_input_tokens, reply.usage.input_tokens) == (62, 65)
    assert reply.usage.cost_usd == pytest.approx(
        (3 * 0.15 + 62 * 0.075 + reply.usage.output_tokens * 0.6) / 1e6
    )
    chunks = [c async for c in world.gateway.stub.StreamChat(follow_up, timeout=10)]
    assert (chunks[-1].usage.cached_input_tokens, chunks[-1].usage.input_tokens) == (62, 65)


# --- documents ------------------------------------------------------------------------------


async def test_documents_reach_each_provider_in_its_own_form(world: World) -> None:
    encoded = base64.b64encode(PDF).decode()
    world.anthropic.reset()
    reply = await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(
            model="claude", messages=[user(pdf(title="Q3"), text("Summarize it."))]
        ),
        timeout=10,
    )
    assert reply.message.parts[-1].text == "Summarize it."
    assert world.anthropic.requests[-1].json()["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": encoded},
        "title": "Q3",
    }
    reply = await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="gemini", messages=[user(text("Read"), pdf())]), timeout=10
    )
    assert reply.message.parts[-1].text == f"Read [application/pdf inline {len(PDF)} bytes]"
    await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="gpt", messages=[user(pdf(title="q3.pdf"), text("Read"))]),
        timeout=10,
    )
    assert world.openai.requests[-1].json()["messages"][0]["content"][0] == {
        "type": "file",
        "file": {"filename": "q3.pdf", "file_data": f"data:application/pdf;base64,{encoded}"},
    }


async def test_documents_are_refused_with_no_upstream_request_elsewhere(world: World) -> None:
    before = len(world.compat.requests)
    for call in (world.gateway.stub.Chat, world.gateway.stub.CountTokens):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(
                chat_pb2.ChatRequest(model="local", messages=[user(text("Read"), pdf())]),
                timeout=10,
            )
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"
        assert [v.field for v in details.bad_request.field_violations] == [
            "messages[0].parts[1].document"
        ]
    assert len(world.compat.requests) == before
    models = await world.gateway.stub.ListModels(models_request(), timeout=10)
    documents = {m.alias: m.capabilities.documents for m in models.models}
    assert documents == {"claude": True, "gemini": True, "gpt": True, "local": False}


def models_request() -> models_pb2.ListModelsRequest:
    return models_pb2.ListModelsRequest()


# --- audit (the server's own record of the RPC) ----------------------------------------


async def test_count_tokens_is_audited(audit_path: Path) -> None:
    config = f"""
server: {{host: 127.0.0.1, port: 0}}
audit: {{path: "{audit_path.with_name("own.jsonl")}"}}
providers: [{{name: mock, mock: {{}}}}]
models: [{{alias: mock, provider: mock}}]
"""
    async with running_gateway(config) as gateway:
        reply = await gateway.stub.CountTokens(chat_request("a b c d", model="mock"), timeout=10)
        assert reply.estimated
    records = [
        json.loads(line) for line in audit_path.with_name("own.jsonl").read_text().splitlines()
    ]
    assert [(r["method"], r["status"], r["model"]) for r in records] == [(COUNT, "OK", "mock")]
