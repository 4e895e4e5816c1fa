"""The Gemini provider through the real gateway, against a fake Gemini API on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from tests.fakes.gemini_fake import (
    GeminiFake,
    StreamShape,
    chunk,
    context_too_long,
    embedding_vector,
    error_response,
    html_error,
    overloaded,
    rate_limited,
    sse_events,
    stream_response,
    usage_metadata,
)
from tests.fakes.http_server import FakeRequest, FakeResponse
from tests.support import Gateway, chat_request, details_of, running_gateway, user

KEY = "gemini-test-key-123"
CONFIG = """
server: {host: 127.0.0.1, port: 0, shutdown_grace: 1s}
routing: {retry: {max_attempts: 1}, breaker: {disabled: true}}
providers:
  - {name: gemini, api_key_env: GEMINI_TEST_KEY, base_url: "BASE", gemini: {}}
  - {name: gemini-slow, api_key_env: GEMINI_TEST_KEY, base_url: "BASE", gemini: {}, timeouts: {read: 1s}}
  - {name: gemini-badkey, api_key_env: GEMINI_BAD_KEY, base_url: "BASE", gemini: {}}
  - {name: gemini-retry, api_key_env: GEMINI_TEST_KEY, base_url: "BASE", gemini: {}, retry: {max_attempts: 2, initial_backoff: 0.01s}}
models:
  - {alias: gemini, provider: gemini, upstream_model: gemini-2.5-flash}
  - {alias: gemini-embed, provider: gemini, upstream_model: text-embedding-004, capabilities: {embeddings: true}}
  - {alias: gemini-slow, provider: gemini-slow, upstream_model: gemini-2.5-flash}
  - {alias: gemini-badkey, provider: gemini-badkey, upstream_model: gemini-2.5-flash}
  - {alias: gemini-missing, provider: gemini, upstream_model: gemini-missing-model}
  - {alias: gemini-retry, provider: gemini-retry, upstream_model: gemini-2.5-flash}
"""


@dataclass
class Env:
    gateway: Gateway
    fake: GeminiFake

    @property
    def stub(self) -> Any:
        return self.gateway.stub

    @property
    def last(self) -> FakeRequest:
        return self.fake.requests[-1]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def env() -> AsyncIterator[Env]:
    fake = GeminiFake(api_key=KEY)
    async with fake:
        environ = {"GEMINI_TEST_KEY": KEY, "GEMINI_BAD_KEY": "not-the-key"}
        async with running_gateway(CONFIG.replace("BASE", fake.base_url), environ) as gateway:
            yield Env(gateway, fake)


@pytest.fixture(autouse=True)
def _scripts_are_used_up(env: Env) -> Any:
    yield
    leftover = len(env.fake.scripted)
    env.fake.scripted.clear()
    env.fake.next_shape = None
    assert leftover == 0, "a scripted response was not requested"


async def collect(
    env: Env, request: chat_pb2.ChatRequest
) -> tuple[list[chat_pb2.StreamChatResponse], grpc.aio.AioRpcError | None]:
    chunks: list[chat_pb2.StreamChatResponse] = []
    try:
        async for item in env.stub.StreamChat(request, timeout=5):
            chunks.append(item)
    except grpc.aio.AioRpcError as error:
        return chunks, error
    return chunks, None


async def chat_error(env: Env, request: chat_pb2.ChatRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.Chat(request, timeout=5)
    return caught.value


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


WEATHER = content_pb2.Tool(
    name="get_weather",
    description="Weather by city",
    parameters=struct(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        }
    ),
)
TIME = content_pb2.Tool(
    name="get_time",
    parameters=struct({"type": "object", "properties": {"zone": {"type": "string"}}}),
)


# --- chat ---------------------------------------------------------------------------------


async def test_chat_text_and_the_wire_request(env: Env) -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Be brief.")]
            ),
            user("Hello there Gemini"),
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.2, max_output_tokens=64, stop_sequences=["STOP"], seed=3
        ),
    )
    response = await env.stub.Chat(request, timeout=5)
    assert [p.text for p in response.message.parts] == ["Hello there Gemini"]
    assert response.message.role == content_pb2.ROLE_ASSISTANT
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_STOP,
        "STOP",
    )
    # Prompt: "Be brief." + "Hello there Gemini" = 5 words; reply 3 words.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 3)
    assert response.usage.total_tokens == 8
    assert (response.route.provider, response.route.upstream_model) == (
        "gemini",
        "gemini-2.5-flash",
    )
    wire = env.last
    assert (wire.method, wire.path) == ("POST", "/v1beta/models/gemini-2.5-flash:generateContent")
    assert wire.query == {}
    assert wire.headers["x-goog-api-key"] == KEY
    assert wire.headers["content-type"] == "application/json"
    assert "authorization" not in wire.headers
    assert wire.json() == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello there Gemini"}]}],
        "generationConfig": {
            "temperature": 0.2,
            "maxOutputTokens": 64,
            "stopSequences": ["STOP"],
            "seed": 3,
        },
    }


async def test_max_output_tokens_gives_length(env: Env) -> None:
    request = chat_request("one two three four five", model="gemini")
    request.generation_config.max_output_tokens = 2
    response = await env.stub.Chat(request, timeout=5)
    assert response.message.parts[0].text == "one two"
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_LENGTH,
        "MAX_TOKENS",
    )


async def test_upstream_request_id_header_is_kept(env: Env) -> None:
    body = chunk([{"text": "Hi"}], "STOP", usage_metadata(1, 1), "resp-h")
    env.fake.script(FakeResponse.json(body, headers={"x-request-id": "gem-req-7"}))
    response = await env.stub.Chat(chat_request("Hi", model="gemini"), timeout=5)
    assert response.route.upstream_request_id == "gem-req-7"


async def test_stream_text_chunks_finish_and_usage(env: Env) -> None:
    text = "one two three four"
    chunks, error = await collect(env, chat_request(text, model="gemini"))
    assert error is None
    assert [c.text_delta for c in chunks[:-1]] == ["one", " two", " three", " four"]
    assert [(i, c.finish_reason) for i, c in enumerate(chunks) if c.finish_reason] == [
        (3, chat_pb2.FINISH_REASON_STOP)
    ]
    assert chunks[3].raw_finish_reason == "STOP"
    assert [i for i, c in enumerate(chunks) if c.HasField("usage")] == [4]
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (4, 4)
    # Gemini sends no request-id header: the responseId names the upstream request.
    assert chunks[0].route.upstream_request_id == f"fake-{env.fake.answers}"
    assert chunks[0].route.provider == "gemini"
    wire = env.last
    assert wire.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert wire.query == {"alt": ["sse"]}
    assert wire.headers["x-goog-api-key"] == KEY
    assert wire.json() == {"contents": [{"role": "user", "parts": [{"text": text}]}]}


async def test_tools_two_calls_in_one_turn_unary_and_streamed(env: Env) -> None:
    request = chat_request(
        "get_weather and get_time for Paris",
        model="gemini",
        tools=[WEATHER, TIME],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO),
    )
    response = await env.stub.Chat(request, timeout=5)
    answer_id = f"fake-{env.fake.answers}"
    assert response.finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    assert response.raw_finish_reason == "STOP"
    kinds = [p.WhichOneof("kind") for p in response.message.parts]
    assert kinds == ["reasoning", "tool_call", "tool_call"]
    assert response.message.parts[0].reasoning.signature == "c2lnbmF0dXJl"
    calls = [p.tool_call for p in response.message.parts[1:]]
    assert [(c.id, c.name) for c in calls] == [
        (f"call_{answer_id}_0", "get_weather"),
        (f"call_{answer_id}_1", "get_time"),
    ]
    text = "get_weather and get_time for Paris"
    assert json.loads(calls[0].arguments) == {"city": text, "days": 5}
    assert json.loads(calls[1].arguments) == {"zone": text}
    wire = env.last.json()
    assert wire["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                        "required": ["city"],
                    },
                },
                {
                    "name": "get_time",
                    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
                },
            ]
        }
    ]
    assert wire["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    chunks, error = await collect(env, request)
    assert error is None
    stream_id = f"fake-{env.fake.answers}"
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, f"call_{stream_id}_0", "get_weather"),
        (1, f"call_{stream_id}_1", "get_time"),
    ]
    assert [d.arguments_delta for d in deltas] == [c.arguments for c in calls]
    assert [c.reasoning_signature for c in chunks if c.reasoning_signature] == ["c2lnbmF0dXJl"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]
    assert chunks[-1].HasField("usage") and chunks[-1].usage.output_tokens > 0


async def test_tool_results_go_back_as_function_responses(env: Env) -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        tools=[WEATHER, TIME],
        messages=[
            user("get_weather and get_time"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[
                    content_pb2.Part(reasoning=content_pb2.Reasoning(signature="c2ln")),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(
                            id="call_a", name="get_weather", arguments='{"city":"Paris"}'
                        )
                    ),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(id="call_b", name="get_time", arguments="{}")
                    ),
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(
                            tool_call_id="call_a", content='{"temp":21}'
                        )
                    )
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(tool_call_id="call_b", content="noon")
                    )
                ],
            ),
        ],
    )
    response = await env.stub.Chat(request, timeout=5)
    assert response.message.parts[0].text == (
        'get_weather returned {"temp":21} get_time returned {"output":"noon"}'
    )
    assert response.finish_reason == chat_pb2.FINISH_REASON_STOP
    contents = env.last.json()["contents"]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2ln",
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
            ],
        },
    ]


async def test_image_input_inline_and_by_url(env: Env) -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_USER,
                parts=[
                    content_pb2.Part(text="What is this?"),
                    content_pb2.Part(
                        image=content_pb2.Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
                    ),
                    content_pb2.Part(
                        image=content_pb2.Image(
                            url="https://example.com/cat.jpg", mime_type="image/jpeg"
                        )
                    ),
                ],
            )
        ],
    )
    response = await env.stub.Chat(request, timeout=5)
    assert response.message.parts[0].text == (
        "What is this? [image/png inline 8 bytes] [image/jpeg https://example.com/cat.jpg]"
    )
    assert response.usage.input_tokens == 5  # 3 words + 2 images
    assert env.last.json()["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
    ]


async def test_image_url_without_media_type_is_refused_before_any_upstream_call(
    env: Env,
) -> None:
    before = len(env.fake.requests)
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_USER,
                parts=[
                    content_pb2.Part(text="What is this?"),
                    content_pb2.Part(image=content_pb2.Image(url="https://example.com/cat")),
                ],
            )
        ],
    )
    details = details_of(await chat_error(env, request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info.reason == "INVALID_REQUEST"
    assert list(details.violations) == ["messages[0].parts[1].image.mime_type"]
    assert len(env.fake.requests) == before


async def test_json_output_with_schema_and_json_object(env: Env) -> None:
    request = chat_request("Paris", model="gemini")
    request.generation_config.response_format.CopyFrom(
        chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="city",
            json_schema=struct(
                {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
                }
            ),
        )
    )
    response = await env.stub.Chat(request, timeout=5)
    assert json.loads(response.message.parts[0].text) == {"name": "Paris", "size": 1}
    config = env.last.json()["generationConfig"]
    assert config == {
        "responseMimeType": "application/json",
        "responseJsonSchema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
        },
    }
    request.generation_config.response_format.CopyFrom(
        chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    )
    chunks, error = await collect(env, request)
    assert error is None
    assert json.loads("".join(c.text_delta for c in chunks)) == {"echo": "Paris"}
    assert env.last.json()["generationConfig"] == {"responseMimeType": "application/json"}


async def test_reasoning_budget_returns_thoughts_and_reasoning_tokens(env: Env) -> None:
    request = chat_request("Why is the sky blue", model="gemini")
    request.generation_config.reasoning_budget_tokens = 512
    response = await env.stub.Chat(request, timeout=5)
    assert response.message.parts[0].reasoning.text == "Thinking it over."
    assert response.message.parts[1].text == "Why is the sky blue"
    assert response.usage.reasoning_tokens == 3
    assert response.usage.output_tokens == 5 + 3
    assert env.last.json()["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 512, "includeThoughts": True}
    }
    chunks, error = await collect(env, request)
    assert error is None
    assert chunks[0].reasoning_delta == "Thinking it over."
    assert chunks[-1].usage.reasoning_tokens == 3


# --- stream framing edge cases (reference §10) ----------------------------------------------

TEXT = "héllo wörld 漢字 😀 done"


@pytest.mark.parametrize(
    "shape",
    [
        StreamShape(),
        StreamShape(line_ending="\n"),
        StreamShape(line_ending="\r"),
        StreamShape(line_ending="mixed"),
        StreamShape(space=False, comments=True),
        StreamShape(multiline=True),
        StreamShape(split=1),
        StreamShape(split=5, comments=True, multiline=True),
        StreamShape(coalesce=True),
        StreamShape(trailing_usage=True, delay=0.01),
    ],
    ids=[
        "crlf",
        "lf",
        "cr",
        "mixed",
        "nospace-comments",
        "multiline",
        "split1",
        "split5",
        "coalesced",
        "trailing-usage",
    ],
)
async def test_stream_framings_give_the_same_answer(env: Env, shape: StreamShape) -> None:
    env.fake.next_shape = shape
    chunks, error = await collect(env, chat_request(TEXT, model="gemini"))
    assert error is None
    assert "".join(c.text_delta for c in chunks) == TEXT
    assert sum(1 for c in chunks if c.finish_reason) == 1
    assert chunks[-1].usage.output_tokens == 5
    assert chunks[-1].usage.input_tokens == 5
    assert env.fake.next_shape is None, "the shape was used"


async def test_very_large_single_event(env: Env) -> None:
    big = "x" * 100_000 + " é"
    env.fake.script(stream_response([chunk([{"text": big}], "STOP", usage_metadata(1, 2))]))
    chunks, error = await collect(env, chat_request("big", model="gemini"))
    assert error is None
    assert "".join(c.text_delta for c in chunks) == big


# --- errors -------------------------------------------------------------------------------


async def test_429_with_only_a_body_retry_info(env: Env) -> None:
    env.fake.script(rate_limited("27s"))
    details = details_of(await chat_error(env, chat_request(model="gemini")))
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.error_info.reason == "RATE_LIMITED"
    assert details.error_info.metadata["upstreamStatus"] == "429"
    assert details.error_info.metadata["upstreamType"] == "RESOURCE_EXHAUSTED"
    assert details.error_info.metadata["provider"] == "gemini"
    assert details.retry_info is not None
    assert details.retry_info.retry_delay.ToMilliseconds() == 27_000
    assert "quota" not in details.message


async def test_429_retry_after_header_wins_over_the_body(env: Env) -> None:
    env.fake.script(rate_limited("27s", headers={"retry-after": "2"}))
    details = details_of(await chat_error(env, chat_request(model="gemini")))
    assert details.retry_info is not None
    assert details.retry_info.retry_delay.ToMilliseconds() == 2_000


async def test_body_retry_info_is_the_floor_of_the_gateways_retry(env: Env) -> None:
    env.fake.script(rate_limited("0.3s"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await env.stub.Chat(chat_request("again", model="gemini-retry"), timeout=5)
    assert response.message.parts[0].text == "again"
    assert response.route.attempts == 2
    assert loop.time() - started >= 0.3


@pytest.mark.parametrize(
    ("response", "code", "reason"),
    [
        (overloaded(), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (
            error_response(500, "INTERNAL", "An internal error has occurred."),
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_INTERNAL",
        ),
        (context_too_long(), grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED"),
        (
            error_response(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
            ),
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_AUTH_FAILED",
        ),
        (
            error_response(403, "PERMISSION_DENIED", "Permission denied.", wrapped=True),
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_PERMISSION_DENIED",
        ),
        (html_error(502), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BAD_GATEWAY"),
        (
            FakeResponse.raw(b"", status=504),
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
        ),
    ],
    ids=["503", "500", "context", "401", "403-wrapped", "502-html", "504-empty"],
)
async def test_error_statuses_unary_and_streamed(
    env: Env, response: FakeResponse, code: grpc.StatusCode, reason: str
) -> None:
    env.fake.script(response, response)
    details = details_of(await chat_error(env, chat_request(model="gemini")))
    assert (details.code, details.error_info.reason) == (code, reason)
    assert details.error_info.metadata["upstreamStatus"] == str(response.status)
    chunks, error = await collect(env, chat_request(model="gemini"))
    assert chunks == [] and error is not None
    streamed = details_of(error)
    assert (streamed.code, streamed.error_info.reason) == (code, reason)
    assert "partialOutput" not in streamed.error_info.metadata


async def test_wrong_key_is_the_gateways_fault_not_the_callers(env: Env) -> None:
    details = details_of(await chat_error(env, chat_request(model="gemini-badkey")))
    assert details.code == grpc.StatusCode.INTERNAL
    assert details.error_info.reason == "UPSTREAM_AUTH_FAILED"
    assert details.error_info.metadata["upstreamStatus"] == "400"
    assert details.error_info.metadata["upstreamCode"] == "API_KEY_INVALID"
    assert env.last.headers["x-goog-api-key"] == "not-the-key"
    assert "not-the-key" not in details.message


async def test_unknown_upstream_model_is_not_found(env: Env) -> None:
    details = details_of(await chat_error(env, chat_request(model="gemini-missing")))
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    assert details.error_info.metadata["model"] == "gemini-missing-model"


async def test_json_error_where_a_stream_was_expected(env: Env) -> None:
    as_200 = rate_limited("3s")
    as_200.status = 200  # the error arrives as the answer to streamGenerateContent
    env.fake.script(as_200)
    chunks, error = await collect(env, chat_request(model="gemini"))
    assert chunks == [] and error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert details.error_info.metadata["upstreamStatus"] == "429"
    assert details.retry_info is not None and details.retry_info.retry_delay.seconds == 3


async def test_mid_stream_error_after_delivered_chunks(env: Env) -> None:
    payloads: list[Any] = [
        chunk([{"text": "Hel"}], usage=usage_metadata(2, 1)),
        chunk([{"text": "lo"}], usage=usage_metadata(2, 2)),
        {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
    ]
    env.fake.script(stream_response(payloads))
    chunks, error = await collect(env, chat_request(model="gemini"))
    assert [c.text_delta for c in chunks] == ["Hel", "lo"]
    assert error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
    )
    assert details.error_info.metadata["partialOutput"] == "true"
    assert details.error_info.metadata["chunksDelivered"] == "2"


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        (StreamShape(stop_after=2), "UPSTREAM_STREAM_TRUNCATED"),
        (StreamShape(reset_after=2), "UPSTREAM_CONNECTION_LOST"),
    ],
    ids=["clean-eof", "reset"],
)
async def test_cut_stream_is_never_ok(env: Env, shape: StreamShape, reason: str) -> None:
    env.fake.next_shape = shape
    chunks, error = await collect(env, chat_request("a b c d", model="gemini"))
    assert [c.text_delta for c in chunks] == ["a", " b"]
    assert not any(c.finish_reason for c in chunks)
    assert error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    assert details.error_info.metadata["partialOutput"] == "true"


async def test_malformed_json_is_internal(env: Env) -> None:
    env.fake.script(FakeResponse.raw(b'{"candidates": [', content_type="application/json"))
    details = details_of(await chat_error(env, chat_request(model="gemini")))
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )
    env.fake.script(stream_response(['{"candidates": [ nope']))
    chunks, error = await collect(env, chat_request(model="gemini"))
    assert chunks == [] and error is not None
    assert details_of(error).error_info.reason == "UPSTREAM_PROTOCOL_ERROR"
    assert details_of(error).code == grpc.StatusCode.INTERNAL
    invalid_utf8 = FakeResponse.stream(
        [b'data: {"candidates": [{"content": {"parts": [{"text": "\xff"}]}}]}\r\n\r\n']
    )
    env.fake.script(invalid_utf8)
    chunks, error = await collect(env, chat_request(model="gemini"))
    assert error is not None and details_of(error).code == grpc.StatusCode.INTERNAL


async def test_slow_first_byte_within_the_read_timeout_succeeds(env: Env) -> None:
    env.fake.next_shape = StreamShape(first_byte_delay=0.1)
    chunks, error = await collect(env, chat_request("slow start", model="gemini-slow"))
    assert error is None and "".join(c.text_delta for c in chunks) == "slow start"


async def test_timeouts_toward_the_upstream(env: Env) -> None:
    # Headers late: longer than the provider's 1 s read timeout. (The fake stops waiting
    # when the gateway gives up and closes the request.)
    body = chunk([{"text": "late"}], "STOP", usage_metadata(1, 1))
    late = FakeResponse.json(body)
    late.header_delay = 5.0
    env.fake.script(late)
    details = details_of(await chat_error(env, chat_request(model="gemini-slow")))
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
    )
    # Headers fast, the first body byte late.
    env.fake.next_shape = StreamShape(first_byte_delay=5.0)
    chunks, error = await collect(env, chat_request("a b", model="gemini-slow"))
    assert chunks == [] and error is not None
    assert details_of(error).error_info.reason == "UPSTREAM_TIMEOUT"
    # A stall mid-stream, after output reached the caller.
    payloads = [chunk([{"text": "a"}]), chunk([{"text": " b"}], "STOP", usage_metadata(1, 2))]
    stalled = stream_response(payloads)
    stalled.writes[1].delay = 5.0
    env.fake.script(stalled)
    chunks, error = await collect(env, chat_request("a b", model="gemini-slow"))
    assert [c.text_delta for c in chunks] == ["a"] and error is not None
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
    )
    assert details.error_info.metadata["partialOutput"] == "true"


# --- embeddings ---------------------------------------------------------------------------


async def test_embed_one_and_many(env: Env) -> None:
    one = await env.stub.Embed(
        embed_pb2.EmbedRequest(model="gemini-embed", inputs=["hello"], dimensions=4), timeout=5
    )
    assert [list(e.values) for e in one.embeddings] == [
        pytest.approx(embedding_vector("hello", 4), abs=1e-6)
    ]
    assert env.last.path == "/v1beta/models/text-embedding-004:embedContent"
    assert env.last.json() == {
        "content": {"parts": [{"text": "hello"}]},
        "outputDimensionality": 4,
    }
    many = await env.stub.Embed(
        embed_pb2.EmbedRequest(model="gemini-embed", inputs=["a", "b", "c"]), timeout=5
    )
    assert [e.index for e in many.embeddings] == [0, 1, 2]
    for embedding, source in zip(many.embeddings, ["a", "b", "c"], strict=True):
        assert list(embedding.values) == pytest.approx(embedding_vector(source, 8), abs=1e-6)
    assert many.route.provider == "gemini"
    assert env.last.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert env.last.headers["x-goog-api-key"] == KEY
    assert env.last.json() == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}}
            for t in ["a", "b", "c"]
        ]
    }


async def test_embed_error_is_mapped(env: Env) -> None:
    env.fake.script(rate_limited("1s"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.Embed(embed_pb2.EmbedRequest(model="gemini-embed", inputs=["x"]), timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.retry_info is not None and details.retry_info.retry_delay.seconds == 1


# --- the fake itself ----------------------------------------------------------------------


async def test_fake_checks_the_key_and_speaks_the_envelope(env: Env) -> None:
    url = f"{env.fake.base_url}/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with httpx.AsyncClient(timeout=5) as client:
        missing = await client.post(url, json=body)
        wrong = await client.post(url, json=body, headers={"x-goog-api-key": "nope"})
        by_query = await client.post(url, json=body, params={"key": KEY})
        array = await client.post(
            url.replace(":generateContent", ":streamGenerateContent"),
            json=body,
            headers={"x-goog-api-key": KEY},
        )
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert b"\n  " in wrong.content, "pretty-printed like Google's"
    assert by_query.status_code == 200
    assert by_query.json()["candidates"][0]["content"]["parts"] == [{"text": "hi"}]
    assert array.headers["content-type"].startswith("application/json")
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in array.json()] == ["hi"]


def test_fake_sse_framing_bytes() -> None:
    events = sse_events([{"a": 1}], StreamShape())
    assert events == [b'data: {"a": 1}\r\n\r\n']
    assert sse_events([{"a": 1}], StreamShape(space=False, line_ending="\n")) == [
        b'data:{"a": 1}\n\n'
    ]
    multi = sse_events([{"a": 1}], StreamShape(multiline=True))[0]
    assert multi == b'data: {\r\ndata:  "a": 1\r\ndata: }\r\n\r\n'
