"""The contract's SDK-level settings through the running gateway, against fakes that speak
each provider's wire format: no silent drops (refused before any upstream call, or
dropped and listed where the alias says so), reasoning effort, refusals, provider
metadata, log probabilities, candidates and provider_options."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from tests.fakes.anthropic_fake import API_KEY as ANTHROPIC_KEY
from tests.fakes.anthropic_fake import AnthropicFake, overloaded
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.http_server import FakeHttpServer
from tests.fakes.ollama_fake import OllamaFake
from tests.fakes.openai_fake import REFUSAL, OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, details_of, running_gateway, user

GEMINI_KEY = "gemini-test-key-123"
CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}, quota_cool_down: 0s}}
providers:
  - {{name: openai, api_key_env: OPENAI_TEST_KEY, base_url: "{openai}/v1", openai: {{}}}}
  - {{name: vllm, api_key_env: OPENAI_TEST_KEY, base_url: "{openai}/v1", openai_compatible: {{}}}}
  - {{name: azure, api_key_env: AZURE_TEST_KEY, base_url: "{azure}", azure_openai: {{api_version: 2024-10-21}}}}
  - {{name: claude, api_key_env: ANTHROPIC_TEST_KEY, base_url: "{anthropic}/v1", anthropic: {{}}}}
  - {{name: gemini, api_key_env: GEMINI_TEST_KEY, base_url: "{gemini}", gemini: {{}}}}
  - {{name: ollama, base_url: "{ollama}", ollama: {{}}}}
models:
  - {{alias: gpt, provider: openai, upstream_model: gpt-4o-mini}}
  - {{alias: gpt-open, provider: openai, upstream_model: gpt-4o-mini, allow_provider_options: true}}
  - {{alias: local, provider: vllm, upstream_model: qwen2.5-7b}}
  - {{alias: azure-gpt, provider: azure, upstream_model: gpt-4o-deploy}}
  - {{alias: claude, provider: claude, upstream_model: claude-sonnet-4-5}}
  - {{alias: claude-lenient, provider: claude, upstream_model: claude-sonnet-4-5, drop_unsupported: true}}
  - {{alias: claude-then-gpt, provider: claude, upstream_model: claude-sonnet-4-5, fallbacks: [gpt]}}
  - {{alias: gemini, provider: gemini, upstream_model: gemini-2.5-flash}}
  - {{alias: gemini3, provider: gemini, upstream_model: gemini-3-flash-preview}}
  - {{alias: gemini-open, provider: gemini, upstream_model: gemini-2.5-flash, allow_provider_options: true}}
  - {{alias: llama, provider: ollama, upstream_model: llama3.2}}
"""
ENVIRON = {
    "OPENAI_TEST_KEY": "sk-test",
    "AZURE_TEST_KEY": "az-key",
    "ANTHROPIC_TEST_KEY": ANTHROPIC_KEY,
    "GEMINI_TEST_KEY": GEMINI_KEY,
}


@dataclass
class World:
    gateway: Gateway
    openai: FakeHttpServer
    azure: FakeHttpServer
    anthropic: AnthropicFake
    gemini: GeminiFake
    ollama: OllamaFake

    def upstream_requests(self) -> int:
        return sum(
            len(fake.requests)
            for fake in (self.openai, self.azure, self.anthropic, self.gemini, self.ollama)
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world() -> AsyncIterator[World]:
    openai_handler = OpenAIFake(OpenAIFakeConfig(key="sk-test"))
    azure_handler = OpenAIFake(OpenAIFakeConfig(key="az-key", auth="azure", azure_annotations=True))
    async with (
        FakeHttpServer(openai_handler.handle) as openai,
        FakeHttpServer(azure_handler.handle) as azure,
        AnthropicFake() as anthropic,
        GeminiFake(api_key=GEMINI_KEY) as gemini,
        OllamaFake() as ollama,
    ):
        config = CONFIG.format(
            openai=openai.url,
            azure=azure.url,
            anthropic=anthropic.url,
            gemini=gemini.base_url,
            ollama=ollama.url,
        )
        async with running_gateway(config, environ=ENVIRON) as gateway:
            yield World(gateway, openai, azure, anthropic, gemini, ollama)


def settings(**fields: Any) -> chat_pb2.GenerationConfig:
    return chat_pb2.GenerationConfig(**fields)


async def stream(world: World, request: chat_pb2.ChatRequest) -> list[chat_pb2.StreamChatResponse]:
    return [c async for c in world.gateway.stub.StreamChat(request, timeout=10)]


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


# 1. No silent drops ------------------------------------------------------------------

REFUSED = [
    ("gpt", settings(top_k=5), "generation_config.top_k"),
    ("gpt", settings(reasoning_budget_tokens=512), "generation_config.reasoning_budget_tokens"),
    ("claude", settings(seed=3), "generation_config.seed"),
    ("claude", settings(presence_penalty=0.5), "generation_config.presence_penalty"),
    ("claude", settings(frequency_penalty=0.5), "generation_config.frequency_penalty"),
    ("claude", settings(logprobs=True), "generation_config.logprobs"),
    ("claude", settings(candidate_count=2), "generation_config.candidate_count"),
    ("llama", settings(logprobs=True), "generation_config.logprobs"),
    ("llama", settings(candidate_count=2), "generation_config.candidate_count"),
]


@pytest.mark.parametrize(("model", "config", "field"), REFUSED)
async def test_unsupported_setting_is_refused_before_any_upstream_call(
    world: World, model: str, config: chat_pb2.GenerationConfig, field: str
) -> None:
    before = world.upstream_requests()
    for call in ("Chat", "StreamChat"):
        request = chat_request("hello", model=model, generation_config=config)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if call == "Chat":
                await world.gateway.stub.Chat(request, timeout=10)
            else:
                await stream(world, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = details_of(caught.value)
        assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"
        assert list(details.violations) == [field]
    assert world.upstream_requests() == before


async def test_participant_names_are_refused_where_they_cannot_go(world: World) -> None:
    before = world.upstream_requests()
    named = content_pb2.Message(
        role=content_pb2.ROLE_USER, name="alice", parts=[content_pb2.Part(text="hello")]
    )
    for model in ("claude", "gemini", "llama"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.gateway.stub.Chat(
                chat_pb2.ChatRequest(model=model, messages=[named]), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(details_of(caught.value).violations) == ["messages[0].name"]
    assert world.upstream_requests() == before
    response = await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="gpt", messages=[named]), timeout=10
    )
    assert response.message.parts[0].text == "hello"
    assert world.openai.requests[-1].json()["messages"][0]["name"] == "alice"


async def test_candidates_are_refused_for_streams_everywhere(world: World) -> None:
    before = world.upstream_requests()
    request = chat_request("hello", model="gpt", generation_config=settings(candidate_count=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(world, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidate_count in StreamChat" in (caught.value.details() or "")
    assert world.upstream_requests() == before


async def test_drop_unsupported_alias_sends_without_them_and_says_so(world: World) -> None:
    world.anthropic.reset()
    config = settings(seed=3, frequency_penalty=1.0, temperature=0.5)
    request = chat_request("hello there", model="claude-lenient", generation_config=config)
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert list(response.route.dropped_settings) == [
        "generation_config.seed",
        "generation_config.frequency_penalty",
    ]
    sent = world.anthropic.requests[-1].json()
    assert sent["temperature"] == 0.5
    assert not {"seed", "frequency_penalty", "presence_penalty"} & set(sent)
    chunks = await stream(world, request)
    assert list(chunks[0].route.dropped_settings) == list(response.route.dropped_settings)
    assert list(chunks[-1].route.dropped_settings) == list(response.route.dropped_settings)
    # A request the alias can take whole reports nothing dropped.
    plain = await world.gateway.stub.Chat(chat_request("hi", model="claude-lenient"), timeout=10)
    assert list(plain.route.dropped_settings) == []


async def test_fallback_that_cannot_take_a_setting_is_skipped(world: World) -> None:
    # The primary (Anthropic) takes top_k; its fallback (OpenAI) does not and is never
    # planned, so the primary's failure is the call's answer and OpenAI sees nothing.
    world.anthropic.reset()
    world.anthropic.script(overloaded({}))
    before = len(world.openai.requests)
    request = chat_request("hello", model="claude-then-gpt", generation_config=settings(top_k=4))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(world.openai.requests) == before
    # Without top_k the fallback serves.
    world.anthropic.script(overloaded({}))
    served = await world.gateway.stub.Chat(
        chat_request("hello", model="claude-then-gpt"), timeout=10
    )
    assert served.route.provider == "openai" and served.route.fallback_used


# 2. Reasoning ------------------------------------------------------------------------


async def test_reasoning_effort_reaches_each_provider_in_its_own_form(world: World) -> None:
    high = settings(reasoning_effort=chat_pb2.REASONING_EFFORT_HIGH)
    response = await world.gateway.stub.Chat(
        chat_request("think", model="gpt", generation_config=high), timeout=10
    )
    assert world.openai.requests[-1].json()["reasoning_effort"] == "high"
    assert response.usage.reasoning_tokens == 16
    local = await world.gateway.stub.Chat(
        chat_request("think", model="local", generation_config=high), timeout=10
    )
    assert world.openai.requests[-1].json()["reasoning_effort"] == "high"
    assert local.usage.reasoning_tokens == 16
    chunks = await stream(world, chat_request("think", model="gpt", generation_config=high))
    assert chunks[-1].usage.reasoning_tokens == 16

    world.anthropic.reset()
    low = settings(reasoning_effort=chat_pb2.REASONING_EFFORT_LOW)
    answer = await world.gateway.stub.Chat(
        chat_request("think", model="claude", generation_config=low), timeout=10
    )
    sent = world.anthropic.requests[-1].json()
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] > 1024
    assert answer.message.parts[0].reasoning.text == "The user wrote: think"
    assert answer.usage.reasoning_tokens > 0
    # The budget, when also given, wins.
    both = settings(
        reasoning_effort=chat_pb2.REASONING_EFFORT_HIGH,
        reasoning_budget_tokens=2000,
        max_output_tokens=3000,
    )
    await world.gateway.stub.Chat(
        chat_request("think", model="claude", generation_config=both), timeout=10
    )
    assert world.anthropic.requests[-1].json()["thinking"]["budget_tokens"] == 2000

    medium = settings(reasoning_effort=chat_pb2.REASONING_EFFORT_MEDIUM)
    await world.gateway.stub.Chat(
        chat_request("think", model="gemini", generation_config=medium), timeout=10
    )
    thinking = world.gemini.requests[-1].json()["generationConfig"]["thinkingConfig"]
    assert thinking == {"thinkingBudget": 8192, "includeThoughts": True}
    await world.gateway.stub.Chat(
        chat_request("think", model="gemini3", generation_config=medium), timeout=10
    )
    thinking = world.gemini.requests[-1].json()["generationConfig"]["thinkingConfig"]
    assert thinking == {"thinkingLevel": "medium", "includeThoughts": True}

    await world.gateway.stub.Chat(
        chat_request("think", model="llama", generation_config=high), timeout=10
    )
    assert world.ollama.requests[-1].json()["think"] == "high"


async def test_anthropic_redacted_thinking_is_kept_and_sent_back(world: World) -> None:
    world.anthropic.reset()
    config = settings(reasoning_budget_tokens=1024, max_output_tokens=2000)
    request = chat_request("please redact this", model="claude", generation_config=config)
    response = await world.gateway.stub.Chat(request, timeout=10)
    redacted = [p.reasoning.redacted for p in response.message.parts if p.reasoning.redacted]
    assert len(redacted) == 1 and redacted[0].startswith("EmwK")
    chunks = await stream(world, request)
    assert [c.reasoning_redacted for c in chunks if c.reasoning_redacted] == redacted

    follow_up = chat_pb2.ChatRequest(
        model="claude",
        messages=[*request.messages, response.message, user("and then?")],
        generation_config=config,
    )
    await world.gateway.stub.Chat(follow_up, timeout=10)
    assistant = world.anthropic.requests[-1].json()["messages"][1]
    assert assistant["role"] == "assistant"
    assert {"type": "redacted_thinking", "data": redacted[0]} in assistant["content"]


# 3. Refusals and provider metadata ---------------------------------------------------


async def test_openai_refusal_is_its_own_thing_in_both_rpcs(world: World) -> None:
    request = chat_request("refuse this please", model="gpt")
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert response.finish_reason == chat_pb2.FINISH_REASON_REFUSAL
    assert response.refusal == REFUSAL
    assert all(REFUSAL not in p.text for p in response.message.parts)
    chunks = await stream(world, request)
    assert "".join(c.refusal_delta for c in chunks) == REFUSAL
    assert "".join(c.text_delta for c in chunks) == ""
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_REFUSAL]


async def test_anthropic_refusal_stop_reason(world: World) -> None:
    world.anthropic.reset()
    world.anthropic.stop_reason = "refusal"
    request = chat_request("hello", model="claude")
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_REFUSAL,
        "refusal",
    )
    chunks = await stream(world, request)
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_REFUSAL]
    world.anthropic.reset()


async def test_gemini_blocked_prompt_is_a_refusal_with_its_feedback(world: World) -> None:
    request = chat_request("unsafe question", model="gemini")
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert response.finish_reason == chat_pb2.FINISH_REASON_REFUSAL
    assert response.refusal == "the provider blocked the prompt (SAFETY)"
    feedback = json_format.MessageToDict(response.provider_metadata)["prompt_feedback"]
    assert feedback["blockReason"] == "SAFETY"
    chunks = await stream(world, request)
    assert "".join(c.refusal_delta for c in chunks) == response.refusal
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_REFUSAL]
    final = json_format.MessageToDict(chunks[-1].provider_metadata)
    assert final["prompt_feedback"]["blockReason"] == "SAFETY"


async def test_provider_metadata_on_the_response_and_the_final_chunk(world: World) -> None:
    response = await world.gateway.stub.Chat(chat_request("hi", model="gpt"), timeout=10)
    expected = {"system_fingerprint": "fp_fake", "service_tier": "default"}
    assert json_format.MessageToDict(response.provider_metadata) == expected
    chunks = await stream(world, chat_request("hi", model="gpt"))
    assert json_format.MessageToDict(chunks[-1].provider_metadata) == expected
    assert all(not c.HasField("provider_metadata") for c in chunks[:-1])

    world.anthropic.reset()
    stop = settings(stop_sequences=["STOP"])
    request = chat_request("one STOP two", model="claude", generation_config=stop)
    answer = await world.gateway.stub.Chat(request, timeout=10)
    assert json_format.MessageToDict(answer.provider_metadata) == {"stop_sequence": "STOP"}
    chunks = await stream(world, request)
    assert json_format.MessageToDict(chunks[-1].provider_metadata) == {"stop_sequence": "STOP"}

    azure = await world.gateway.stub.Chat(chat_request("hi", model="azure-gpt"), timeout=10)
    filtered = json_format.MessageToDict(azure.provider_metadata)
    assert filtered["prompt_filter_results"][0]["prompt_index"] == 0
    assert filtered["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    chunks = await stream(world, chat_request("hi", model="azure-gpt"))
    streamed = json_format.MessageToDict(chunks[-1].provider_metadata)
    assert streamed["prompt_filter_results"] == filtered["prompt_filter_results"]
    assert streamed["content_filter_results"] == filtered["content_filter_results"]

    cited = await world.gateway.stub.Chat(chat_request("cite me", model="gemini"), timeout=10)
    metadata = json_format.MessageToDict(cited.provider_metadata)
    assert metadata["safety_ratings"][0]["category"] == "HARM_CATEGORY_HARASSMENT"
    assert metadata["citation_metadata"]["citationSources"][0]["uri"] == "https://example.org/"


# 6. Log probabilities and candidates -------------------------------------------------


async def test_logprobs_in_both_rpcs(world: World) -> None:
    config = settings(logprobs=True, top_logprobs=2)
    for model in ("gpt", "local", "azure-gpt", "gemini"):
        request = chat_request("alpha beta", model=model, generation_config=config)
        response = await world.gateway.stub.Chat(request, timeout=10)
        assert "".join(t.token for t in response.logprobs) == "alpha beta"
        assert all(len(t.top_logprobs) == 2 for t in response.logprobs)
        assert response.logprobs[0].logprob < 0
        chunks = await stream(world, request)
        streamed = [t for c in chunks for t in c.logprobs]
        assert [t.token for t in streamed] == [t.token for t in response.logprobs]
    sent = world.gemini.requests[-1].json()["generationConfig"]
    assert (sent["responseLogprobs"], sent["logprobs"]) == (True, 2)
    sent = world.openai.requests[-1].json()
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)


async def test_candidates_for_chat(world: World) -> None:
    config = settings(candidate_count=3)
    for model in ("gpt", "local", "azure-gpt", "gemini"):
        request = chat_request("echo", model=model, generation_config=config)
        response = await world.gateway.stub.Chat(request, timeout=10)
        assert response.message.parts[0].text == "echo"
        assert [(c.index, c.message.parts[0].text) for c in response.candidates] == [
            (1, "echo (1)"),
            (2, "echo (2)"),
        ]
        assert all(c.finish_reason == chat_pb2.FINISH_REASON_STOP for c in response.candidates)
    assert world.openai.requests[-1].json()["n"] == 3
    assert world.gemini.requests[-1].json()["generationConfig"]["candidateCount"] == 3


# 7. provider_options -----------------------------------------------------------------


async def test_provider_options_merge_only_where_allowed(world: World) -> None:
    options = struct({"service_tier": "flex", "metadata": {"team": "search"}})
    request = chat_request("hi", model="gpt-open")
    request.provider_options.CopyFrom(options)
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert response.message.parts[0].text == "hi"
    sent = world.openai.requests[-1].json()
    assert (sent["service_tier"], sent["metadata"]) == ("flex", {"team": "search"})
    chunks = await stream(world, request)
    assert world.openai.requests[-1].json()["service_tier"] == "flex"
    assert chunks[-1].HasField("usage")

    gemini = chat_request("hi", model="gemini-open")
    gemini.provider_options.CopyFrom(struct({"generationConfig": {"responseModalities": ["TEXT"]}}))
    await world.gateway.stub.Chat(gemini, timeout=10)
    assert world.gemini.requests[-1].json()["generationConfig"]["responseModalities"] == ["TEXT"]


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("gpt", {"service_tier": "flex"}, "provider_options"),
        ("gpt-open", {"model": "gpt-5"}, "provider_options.model"),
        ("gpt-open", {"messages": []}, "provider_options.messages"),
        ("gpt-open", {"stream": True}, "provider_options.stream"),
        ("gpt-open", {"api_key": "x"}, "provider_options.api_key"),
        ("gemini-open", {"systemInstruction": {}}, "provider_options.systemInstruction"),
        ("gpt-open", {"temperature": 1}, "provider_options.temperature"),
    ],
)
async def test_provider_options_refused(
    world: World, model: str, options: dict[str, Any], field: str
) -> None:
    before = world.upstream_requests()
    request = chat_request("hi", model=model, generation_config=settings(temperature=0.5))
    request.provider_options.CopyFrom(struct(options))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details_of(caught.value).violations) == [field]
    assert world.upstream_requests() == before


async def test_provider_options_keys_are_audited_never_values(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    handler = OpenAIFake(OpenAIFakeConfig(key="sk-test"))
    async with FakeHttpServer(handler.handle) as openai:
        config = f"""
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
audit: {{path: {json.dumps(str(audit))}}}
providers:
  - {{name: openai, api_key_env: OPENAI_TEST_KEY, base_url: "{openai.url}/v1", openai: {{}}}}
models:
  - {{alias: gpt-open, provider: openai, upstream_model: gpt-4o-mini, allow_provider_options: true}}
"""
        async with running_gateway(config, environ=ENVIRON) as gateway:
            request = chat_request("hi", model="gpt-open")
            request.provider_options.CopyFrom(struct({"user": "secret-user-77", "store": False}))
            await gateway.stub.Chat(request, timeout=10)
    # The gateway has stopped: every record is written.
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    chat = next(r for r in records if r["method"].endswith("/Chat"))
    assert chat["provider_options"] == ["store", "user"]
    assert "secret-user-77" not in audit.read_text()
