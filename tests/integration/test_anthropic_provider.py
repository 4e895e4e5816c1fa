"""The Anthropic provider through the real gateway, against a fake Anthropic upstream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from tests.fakes import anthropic_fake
from tests.fakes.anthropic_fake import API_KEY, AnthropicFake, StreamStyle
from tests.fakes.http_server import FakeResponse
from tests.support import Gateway, chat_request, details_of, running_gateway, user

CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
# One attempt per call, no circuit breaker and no quota cool-down: every test sees what
# one upstream answer maps to, and the failures of one test do not keep the next from
# the upstream.
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}, quota_cool_down: 0s}}
providers:
  - name: claude
    api_key_env: ANTHROPIC_TEST_KEY
    base_url: {url}/v1
    timeouts: {{read: 1s}}
    anthropic: {{}}
  - name: claude-beta
    api_key_env: ANTHROPIC_TEST_KEY
    base_url: {url}/v1
    anthropic:
      version: "2024-10-22"
      betas: [interleaved-thinking-2025-05-14, files-api-2025-04-14]
      default_max_tokens: 1000
  - name: claude-badkey
    api_key_env: ANTHROPIC_WRONG_KEY
    base_url: {url}/v1
    anthropic: {{}}
  - name: claude-retry
    api_key_env: ANTHROPIC_TEST_KEY
    base_url: {url}/v1
    retry: {{max_attempts: 2, initial_backoff: 0.01s, max_backoff: 0.02s}}
    anthropic: {{}}
models:
  - alias: claude
    provider: claude
    upstream_model: claude-sonnet-4-5
    pricing: {{input_per_million: 3, output_per_million: 15, cached_input_per_million: 0.3, cache_write_input_per_million: 3.75}}
  - alias: claude-beta
    provider: claude-beta
    upstream_model: claude-opus-4-1
  - alias: claude-badkey
    provider: claude-badkey
    upstream_model: claude-sonnet-4-5
  - alias: claude-retry
    provider: claude-retry
    upstream_model: claude-sonnet-4-5
"""
ENVIRON = {"ANTHROPIC_TEST_KEY": API_KEY, "ANTHROPIC_WRONG_KEY": "sk-ant-wrong"}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@dataclass
class Setup:
    fake: AnthropicFake
    gateway: Gateway


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with AnthropicFake() as fake:
        config = CONFIG.format(url=fake.url)
        async with running_gateway(config, environ=ENVIRON) as gateway:
            yield Setup(fake, gateway)


@pytest_asyncio.fixture(loop_scope="session")
async def env(setup: Setup) -> Setup:
    setup.fake.reset()
    return setup


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


WEATHER = content_pb2.Tool(
    name="get_weather",
    description="Current weather",
    parameters=struct(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ),
)
TIME = content_pb2.Tool(
    name="get_time",
    description="Local time",
    parameters=struct(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "utc_offset": {"type": "integer"}},
        }
    ),
)


async def collect(
    gateway: Gateway, request: chat_pb2.ChatRequest
) -> tuple[list[chat_pb2.StreamChatResponse], grpc.aio.AioRpcError | None]:
    """Every chunk that arrived, and the error that ended the stream (or None)."""
    chunks: list[chat_pb2.StreamChatResponse] = []
    try:
        async for chunk in gateway.stub.StreamChat(request, timeout=10):
            chunks.append(chunk)
    except grpc.aio.AioRpcError as error:
        return chunks, error
    return chunks, None


def only_request(fake: AnthropicFake) -> dict[str, object]:
    assert len(fake.requests) == 1
    wire = fake.requests[0]
    assert (wire.method, wire.path) == ("POST", "/v1/messages")
    body: dict[str, object] = wire.json()
    return body


# Chat ----------------------------------------------------------------------


async def test_chat_text_and_the_wire_request(env: Setup) -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Be brief.")]
            ),
            user("Hello there, Claude"),
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.25,
            top_p=0.5,
            top_k=20,
            max_output_tokens=64,
            stop_sequences=["STOP"],
        ),
        labels={"team": "search"},
    )
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert [p.text for p in response.message.parts] == ["Hello there, Claude"]
    assert response.message.role == content_pb2.ROLE_ASSISTANT
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_STOP,
        "end_turn",
    )
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 3)
    assert response.usage.total_tokens == 8
    assert response.route.provider == "claude"
    assert response.route.upstream_model == "claude-sonnet-4-5"
    assert response.route.upstream_request_id == "req_011Fake000001"

    wire = env.fake.requests[0]
    assert wire.headers["x-api-key"] == API_KEY
    assert wire.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in wire.headers
    assert "authorization" not in wire.headers
    assert wire.headers["content-type"] == "application/json"
    assert only_request(env.fake) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello there, Claude"}]}
        ],
        "temperature": 0.25,
        "top_p": 0.5,
        "top_k": 20,
        "stop_sequences": ["STOP"],
    }


async def test_stop_sequence_and_max_tokens(env: Setup) -> None:
    stopped = await env.gateway.stub.Chat(
        chat_request(
            "one two STOP three",
            model="claude",
            generation_config=chat_pb2.GenerationConfig(stop_sequences=["STOP"]),
        ),
        timeout=5,
    )
    assert (stopped.message.parts[0].text, stopped.raw_finish_reason) == (
        "one two ",
        "stop_sequence",
    )
    assert stopped.finish_reason == chat_pb2.FINISH_REASON_STOP
    cut = await env.gateway.stub.Chat(
        chat_request(
            "a b c d e",
            model="claude",
            generation_config=chat_pb2.GenerationConfig(max_output_tokens=2),
        ),
        timeout=5,
    )
    assert (cut.message.parts[0].text, cut.finish_reason, cut.raw_finish_reason) == (
        "a b",
        chat_pb2.FINISH_REASON_LENGTH,
        "max_tokens",
    )


async def test_usage_with_cache_and_cost(env: Setup) -> None:
    env.fake.cache_read = 1000
    env.fake.cache_creation = 100
    response = await env.gateway.stub.Chat(
        chat_request("one two three four five six seven eight nine ten", model="claude"),
        timeout=5,
    )
    usage = response.usage
    # input 10 uncached + 100 written + 1000 read; output 10.
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens) == (
        1110,
        1000,
        100,
    )
    assert (usage.output_tokens, usage.total_tokens, usage.reasoning_tokens) == (10, 1120, 0)
    assert usage.HasField("cost_usd")
    # 10 * 3 + 1000 * 0.3 + 100 * 3.75 + 10 * 15 dollars per million tokens.
    assert usage.cost_usd == pytest.approx(855e-6)


async def test_provider_settings_version_betas_and_default_max_tokens(env: Setup) -> None:
    response = await env.gateway.stub.Chat(chat_request("hi", model="claude-beta"), timeout=5)
    assert response.message.parts[0].text == "hi"
    assert not response.usage.HasField("cost_usd")  # no pricing for this alias
    wire = env.fake.requests[0]
    assert wire.headers["anthropic-version"] == "2024-10-22"
    assert wire.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,files-api-2025-04-14"
    body = only_request(env.fake)
    assert (body["model"], body["max_tokens"]) == ("claude-opus-4-1", 1000)


async def test_gzip_encoded_response(env: Setup) -> None:
    message = {
        "id": "msg_gz",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "compressed ✓"}],
        "stop_reason": "refusal",
        "stop_sequence": None,
        "usage": {"input_tokens": 2, "output_tokens": 1},
    }
    env.fake.script(anthropic_fake.gzip_json(message))
    response = await env.gateway.stub.Chat(chat_request("x", model="claude"), timeout=5)
    assert response.message.parts[0].text == "compressed ✓"
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_REFUSAL,
        "refusal",
    )


async def test_slow_first_byte_still_answers(env: Setup) -> None:
    env.fake.header_delay = 0.3
    response = await env.gateway.stub.Chat(chat_request("patience", model="claude"), timeout=5)
    assert response.message.parts[0].text == "patience"
    chunks, error = await collect(env.gateway, chat_request("patience", model="claude"))
    assert error is None
    assert "".join(c.text_delta for c in chunks) == "patience"


# Streaming -----------------------------------------------------------------


async def test_stream_text_finish_usage_and_request_id(env: Setup) -> None:
    env.fake.cache_read = 40
    chunks, error = await collect(env.gateway, chat_request("one two three", model="claude"))
    assert error is None
    assert [c.text_delta for c in chunks if c.text_delta] == ["one", " two", " three"]
    finishes = [
        (i, c.finish_reason, c.raw_finish_reason) for i, c in enumerate(chunks) if c.finish_reason
    ]
    assert finishes == [(len(chunks) - 2, chat_pb2.FINISH_REASON_STOP, "end_turn")]
    assert [i for i, c in enumerate(chunks) if c.HasField("usage")] == [len(chunks) - 1]
    usage = chunks[-1].usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (43, 40, 3)
    assert usage.total_tokens == 46
    assert usage.cost_usd == pytest.approx((3 * 3 + 40 * 0.3 + 3 * 15) / 1e6)
    assert chunks[0].route.upstream_request_id == "req_011Fake000001"
    assert chunks[0].route.provider == "claude"
    assert len({c.id for c in chunks}) == 1
    assert only_request(env.fake)["stream"] is True


UNICODE_TEXT = "héllo wörld — 世界 🌍🚀 ok"

STYLES = {
    "crlf": StreamStyle(line_ending="crlf"),
    "lone-cr": StreamStyle(line_ending="cr"),
    "mixed-endings": StreamStyle(line_ending="mixed"),
    "no-space-and-comments": StreamStyle(space=False, comments=True),
    "multi-line-data": StreamStyle(multiline_data=True),
    "split-every-3-bytes": StreamStyle(piece_size=3, delay=0.0005),
    "split-every-7-bytes-crlf": StreamStyle(piece_size=7, line_ending="crlf", delay=0.0005),
    "coalesced": StreamStyle(coalesce=True),
    "pings-first-and-unknown-events": StreamStyle(
        leading_pings=5, pings=3, unknown_events=True, delay=0.01
    ),
    "several-cumulative-usage-deltas": StreamStyle(usage_deltas=3),
}


@pytest.mark.parametrize("style", list(STYLES), ids=list(STYLES))
async def test_stream_framing_edge_cases(env: Setup, style: str) -> None:
    env.fake.style = STYLES[style]
    env.fake.cache_creation = 7
    chunks, error = await collect(env.gateway, chat_request(UNICODE_TEXT, model="claude"))
    assert error is None, style
    assert "".join(c.text_delta for c in chunks) == UNICODE_TEXT
    assert [c.raw_finish_reason for c in chunks if c.finish_reason] == ["end_turn"]
    usage = chunks[-1].usage
    # Counts are cumulative: the last message_delta wins, nothing is summed.
    assert (usage.input_tokens, usage.cache_write_input_tokens, usage.output_tokens) == (13, 7, 6)


async def test_very_large_single_event(env: Setup) -> None:
    word = "é" * 40_000  # 80 KB of UTF-8 in one text_delta event
    chunks, error = await collect(env.gateway, chat_request(f"big {word}", model="claude"))
    assert error is None
    assert [c.text_delta for c in chunks if c.text_delta] == ["big", f" {word}"]


# Tools ---------------------------------------------------------------------


async def test_two_tool_calls_unary_and_streamed_agree(env: Setup) -> None:
    request = chat_request("Paris", model="claude", tools=[WEATHER, TIME])
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert response.finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    assert response.raw_finish_reason == "tool_use"
    assert response.message.parts[0].text == "Let me check."
    calls = [p.tool_call for p in response.message.parts if p.WhichOneof("kind") == "tool_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert all(c.id.startswith("toolu_0") for c in calls) and calls[0].id != calls[1].id
    assert calls[0].arguments == '{"city":"Paris"}'
    assert calls[1].arguments == '{"city":"Paris","utc_offset":1}'
    body = only_request(env.fake)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {
            "name": "get_time",
            "description": "Local time",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "utc_offset": {"type": "integer"}},
            },
        },
    ]
    assert "tool_choice" not in body

    chunks, error = await collect(env.gateway, request)
    assert error is None
    assert "".join(c.text_delta for c in chunks) == "Let me check."
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    for index, call in enumerate(calls):
        mine = [d for d in deltas if d.index == index]
        assert len(mine) > 2, "arguments arrive in several fragments"
        assert (mine[0].id, mine[0].name, mine[0].arguments_delta) == (call.id, call.name, "")
        assert all(not d.id and not d.name and d.arguments_delta for d in mine[1:])
        assert json.loads("".join(d.arguments_delta for d in mine)) == json.loads(call.arguments)
    assert {d.index for d in deltas} == {0, 1}
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]


async def test_tool_result_turns_and_forced_tool(env: Setup) -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        tools=[WEATHER, TIME],
        tool_choice=content_pb2.ToolChoice(tool_name="get_time"),
        messages=[
            user("Weather and time in Paris?"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[
                    content_pb2.Part(
                        reasoning=content_pb2.Reasoning(text="Need both.", signature="EqSig")
                    ),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(
                            id="toolu_A", name="get_weather", arguments='{"city":"Paris"}'
                        )
                    ),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(
                            id="toolu_B", name="get_time", arguments='{"city":"Paris"}'
                        )
                    ),
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(tool_call_id="toolu_A", content="sunny")
                    )
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(
                            tool_call_id="toolu_B", content="timeout", is_error=True
                        )
                    )
                ],
            ),
        ],
    )
    response = await env.gateway.stub.Chat(request, timeout=5)
    calls = [p.tool_call for p in response.message.parts if p.WhichOneof("kind") == "tool_call"]
    assert [c.name for c in calls] == ["get_time"]
    assert json.loads(calls[0].arguments) == {"city": "sunny timeout", "utc_offset": 2}
    body = only_request(env.fake)
    assert body["tool_choice"] == {"type": "tool", "name": "get_time"}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need both.", "signature": "EqSig"},
                {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_B",
                    "name": "get_time",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_B",
                    "content": "timeout",
                    "is_error": True,
                },
            ],
        },
    ]


async def test_invalid_tool_call_arguments_are_refused_before_the_upstream(env: Setup) -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            user("hi"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(id="t", name="f", arguments="{oops")
                    )
                ],
            ),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(request, timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details.violations) == ["messages[1].parts[0].tool_call.arguments"]
    _, error = await collect(
        env.gateway,
        chat_request(
            "x", model="claude", generation_config=chat_pb2.GenerationConfig(temperature=1.7)
        ),
    )
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details_of(error).violations) == ["generation_config.temperature"]
    assert env.fake.requests == []


# Images, JSON, reasoning ---------------------------------------------------


async def test_image_input(env: Setup) -> None:
    message = content_pb2.Message(
        role=content_pb2.ROLE_USER,
        parts=[
            content_pb2.Part(image=content_pb2.Image(data=PNG, mime_type="image/png")),
            content_pb2.Part(image=content_pb2.Image(url="https://example.com/cat.jpg")),
            content_pb2.Part(
                image=content_pb2.Image(url="data:image/gif;base64,R0lGODlhAQABAAAAACw=")
            ),
            content_pb2.Part(text="What is in these?"),
        ],
    )
    response = await env.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="claude", messages=[message]), timeout=5
    )
    assert response.message.parts[0].text == "What is in these?"
    assert response.usage.input_tokens == 3 * anthropic_fake.IMAGE_TOKENS + 4
    body = only_request(env.fake)
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(PNG).decode(),
                    },
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/gif",
                        "data": "R0lGODlhAQABAAAAACw=",
                    },
                },
                {"type": "text", "text": "What is in these?"},
            ],
        }
    ]


async def test_json_schema_and_json_object_output(env: Setup) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    config = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="verdict",
            json_schema=struct(schema),
        )
    )
    response = await env.gateway.stub.Chat(
        chat_request("is it so", model="claude", generation_config=config), timeout=5
    )
    assert json.loads(response.message.parts[0].text) == {"answer": "is it so", "confidence": 1.5}
    assert only_request(env.fake)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    env.fake.reset()
    config = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    )
    # No JSON-object mode at Anthropic (a schema-less object forces `{}`): refused
    # before any upstream request, as no attempt.
    chunks, error = await collect(
        env.gateway, chat_request("anything", model="claude", generation_config=config)
    )
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(error)
    assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"
    assert details.error_info.metadata["attempts"] == "0"
    assert "tried" not in details.error_info.metadata
    assert env.fake.requests == []


async def test_reasoning_unary_and_streamed(env: Setup) -> None:
    config = chat_pb2.GenerationConfig(max_output_tokens=2000, reasoning_budget_tokens=1024)
    request = chat_request("think hard", model="claude", generation_config=config)
    response = await env.gateway.stub.Chat(request, timeout=5)
    reasoning = response.message.parts[0].reasoning
    assert reasoning.text == "The user wrote: think hard"
    assert reasoning.signature.startswith("Eq") and len(reasoning.signature) == 66
    assert response.message.parts[1].text == "think hard"
    assert (response.usage.output_tokens, response.usage.reasoning_tokens) == (7, 5)
    assert only_request(env.fake)["thinking"] == {"type": "enabled", "budget_tokens": 1024}

    chunks, error = await collect(env.gateway, request)
    assert error is None
    assert "".join(c.reasoning_delta for c in chunks) == reasoning.text
    assert [c.reasoning_signature for c in chunks if c.reasoning_signature] == [reasoning.signature]
    assert "".join(c.text_delta for c in chunks) == "think hard"
    assert (chunks[-1].usage.output_tokens, chunks[-1].usage.reasoning_tokens) == (7, 5)


# Errors --------------------------------------------------------------------

ERRORS: dict[str, tuple[FakeResponse, grpc.StatusCode, str, float | None]] = {
    "429-retry-after": (
        anthropic_fake.rate_limited({"retry-after": "3"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        3.0,
    ),
    "429-retry-after-ms": (
        anthropic_fake.rate_limited({"retry-after-ms": "250"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        0.25,
    ),
    "529-overloaded": (
        anthropic_fake.overloaded({"retry-after": "1"}),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_OVERLOADED",
        1.0,
    ),
    "529-should-not-retry": (
        anthropic_fake.overloaded({"retry-after": "1", "x-should-retry": "false"}),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_OVERLOADED",
        None,
    ),
    "500-api-error": (
        anthropic_fake.api_error(),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_INTERNAL",
        None,
    ),
    "400-context": (
        anthropic_fake.context_too_long(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        None,
    ),
    "402-billing": (
        anthropic_fake.billing_error(),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    "400-spend-limit": (
        anthropic_fake.spend_limit(),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    "404-model": (
        anthropic_fake.not_found(),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        None,
    ),
    "413-cdn-html": (
        anthropic_fake.too_large_from_cdn(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
        None,
    ),
    "502-html": (
        anthropic_fake.bad_gateway_html(),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_BAD_GATEWAY",
        None,
    ),
    "503-empty": (
        anthropic_fake.empty_error(503),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        None,
    ),
    "200-malformed-json": (
        anthropic_fake.malformed_json(),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
        None,
    ),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
async def test_chat_errors(env: Setup, case: str) -> None:
    reply, code, reason, retry_after = ERRORS[case]
    env.fake.script(reply)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(chat_request("hi", model="claude"), timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (code, reason)
    metadata = details.error_info.metadata
    assert (metadata["provider"], metadata["model"]) == ("claude", "claude-sonnet-4-5")
    if reply.status >= 400:
        assert metadata["upstreamStatus"] == str(reply.status)
    if reply.headers.get("content-type") == "application/json" and reply.status >= 400:
        assert metadata["upstreamRequestId"] == "req_fake_error"
        assert metadata["upstreamType"] == json.loads(reply.writes[0].data)["error"]["type"]
    if retry_after is None:
        assert details.retry_info is None
    else:
        assert details.retry_info is not None
        assert details.retry_info.retry_delay.ToNanoseconds() == round(retry_after * 1e9)
    assert "usage limits" not in details.message and "<html" not in details.message
    assert len(env.fake.requests) == 1


async def test_retry_follows_the_upstream_hints(env: Setup) -> None:
    env.fake.script(anthropic_fake.overloaded({"retry-after": "0.05"}))
    response = await env.gateway.stub.Chat(chat_request("again", model="claude-retry"), timeout=5)
    assert response.message.parts[0].text == "again"
    assert response.route.attempts == 2
    assert len(env.fake.requests) == 2
    # x-should-retry: false on a 529, and a billing error: one attempt each, no retry.
    for reply, code in (
        (anthropic_fake.overloaded({"x-should-retry": "false"}), grpc.StatusCode.UNAVAILABLE),
        (anthropic_fake.billing_error(), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ):
        env.fake.reset()
        env.fake.script(reply)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.gateway.stub.Chat(chat_request("again", model="claude-retry"), timeout=5)
        assert caught.value.code() == code
        assert len(env.fake.requests) == 1


async def test_wrong_key_is_an_upstream_auth_failure(env: Setup) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(chat_request("hi", model="claude-badkey"), timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
    )
    assert details.error_info.metadata["upstreamType"] == "authentication_error"
    assert details.error_info.metadata["upstreamStatus"] == "401"
    assert "sk-ant-wrong" not in details.message
    assert env.fake.requests[0].headers["x-api-key"] == "sk-ant-wrong"
    _, error = await collect(env.gateway, chat_request("hi", model="claude-badkey"))
    assert error is not None and error.code() == grpc.StatusCode.INTERNAL


async def test_stream_error_before_the_stream_starts(env: Setup) -> None:
    env.fake.script(anthropic_fake.rate_limited({"retry-after": "2"}))
    chunks, error = await collect(env.gateway, chat_request("hi", model="claude"))
    assert chunks == [] and error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert details.retry_info is not None and details.retry_info.retry_delay.seconds == 2
    assert "partialOutput" not in details.error_info.metadata


async def test_stream_error_envelope_with_200_json(env: Setup) -> None:
    envelope = anthropic_fake.error_body("overloaded_error", "Overloaded")
    env.fake.script(FakeResponse.raw(envelope, status=200, content_type="application/json"))
    chunks, error = await collect(env.gateway, chat_request("hi", model="claude"))
    assert chunks == [] and error is not None
    details = details_of(error)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info.metadata["upstreamType"] == "overloaded_error"


async def test_mid_stream_error_after_delivered_chunks(env: Setup) -> None:
    env.fake.error_after = 2
    chunks, error = await collect(env.gateway, chat_request("one two three four", model="claude"))
    assert [c.text_delta for c in chunks] == ["one", " two"]
    assert error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_OVERLOADED",
    )
    metadata = details.error_info.metadata
    assert metadata["partialOutput"] == "true"
    assert metadata["upstreamType"] == "overloaded_error"
    assert metadata["chunksDelivered"] == "2"


@pytest.mark.parametrize(
    ("cut", "delivered", "reason"),
    [
        (1, 0, "UPSTREAM_EMPTY_STREAM"),  # nothing said yet: an empty stream
        (6, 3, "UPSTREAM_STREAM_TRUNCATED"),
        (11, 7, "UPSTREAM_STREAM_TRUNCATED"),
    ],
    ids=["after-message-start", "mid-text", "before-message-stop"],
)
async def test_truncated_stream_is_an_error(
    env: Setup, cut: int, delivered: int, reason: str
) -> None:
    # 12 events: message_start, block start, ping, 6 deltas, block stop, message_delta,
    # message_stop; the fake closes the stream cleanly after `cut` of them.
    env.fake.cut_after = cut
    chunks, error = await collect(
        env.gateway, chat_request("one two three four five six", model="claude")
    )
    assert error is not None, "a cut stream must never end with OK"
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    assert len(chunks) == delivered  # the finish reason (7th chunk) came, message_stop did not
    assert not any(c.HasField("usage") for c in chunks)


async def test_connection_reset_mid_stream(env: Setup) -> None:
    env.fake.reset_after = 5
    chunks, error = await collect(env.gateway, chat_request("one two three four", model="claude"))
    assert error is not None
    assert [c.text_delta for c in chunks] == ["one", " two"]
    details = details_of(error)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info.reason == "UPSTREAM_CONNECTION_LOST"
    assert details.error_info.metadata["partialOutput"] == "true"


@pytest.mark.parametrize(
    "garbage",
    [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n',
        b"event: ping\ndata: \xff\xfe\n\n",
    ],
    ids=["malformed-json", "invalid-utf8"],
)
async def test_malformed_stream_is_internal(env: Setup, garbage: bytes) -> None:
    env.fake.raw_after = (4, garbage)
    chunks, error = await collect(env.gateway, chat_request("one two three", model="claude"))
    assert [c.text_delta for c in chunks] == ["one"]
    assert error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )


async def test_stream_stall_beyond_the_read_timeout(env: Setup) -> None:
    env.fake.style = StreamStyle(delay=1.5)
    env.fake.cut_after = 3
    chunks, error = await collect(env.gateway, chat_request("one two", model="claude"))
    assert chunks == [] and error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
    )
