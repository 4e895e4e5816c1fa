"""The Ollama provider through the running gateway against a fake Ollama on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from tests.fakes.http_server import FakeResponse, Write
from tests.fakes.ollama_fake import (
    NDJSON,
    OllamaFake,
    chat_line,
    embedding,
    error_response,
    gzip_error_response,
    line_writes,
    ndjson,
    ndjson_response,
    text_lines,
)
from tests.support import Gateway, chat_request, details_of, running_gateway, user

KEY = "ollama-test-key-1"
CONFIG = """
server:
  host: 127.0.0.1
  port: 0
  shutdown_grace: 1s
# One attempt per call and no breaker: each scripted upstream answer maps to one status.
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - name: local
    base_url: {url}
    api_key_env: OLLAMA_TEST_KEY
    timeouts: {{read: 1s}}
    ollama: {{keep_alive: 300s}}
models:
  - {{alias: llama, provider: local, upstream_model: llama3.2}}
  - {{alias: llama-embed, provider: local, upstream_model: nomic-embed-text, capabilities: {{embeddings: true}}}}
  - {{alias: ghost, provider: local, upstream_model: ghost-model}}
"""


@dataclass
class Setup:
    fake: OllamaFake
    gateway: Gateway


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def shared() -> AsyncIterator[Setup]:
    async with OllamaFake(api_key=KEY) as fake:
        config = CONFIG.format(url=fake.url)
        async with running_gateway(config, environ={"OLLAMA_TEST_KEY": KEY}) as gateway:
            yield Setup(fake, gateway)


@pytest.fixture
def env(shared: Setup) -> Setup:
    shared.fake.reset()
    return shared


def _weather_tool() -> content_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        }
    )
    return content_pb2.Tool(name="get_weather", description="Weather by city", parameters=schema)


def _time_tool() -> content_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"zone": {"type": "string"}}})
    return content_pb2.Tool(name="get_time", parameters=schema)


async def _stream(
    gateway: Gateway, request: chat_pb2.ChatRequest
) -> list[chat_pb2.StreamChatResponse]:
    return [chunk async for chunk in gateway.stub.StreamChat(request, timeout=5)]


async def _stream_error(
    gateway: Gateway, request: chat_pb2.ChatRequest
) -> tuple[list[chat_pb2.StreamChatResponse], grpc.aio.AioRpcError]:
    chunks: list[chat_pb2.StreamChatResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in gateway.stub.StreamChat(request, timeout=5):
            chunks.append(chunk)
    return chunks, caught.value


def _body(env: Setup, index: int = -1) -> Any:
    return env.fake.requests[index].json()


# Chat and StreamChat -------------------------------------------------------------------


async def test_chat_text_and_the_wire_request(env: Setup) -> None:
    request = chat_pb2.ChatRequest(
        model="llama",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Be brief.")]
            ),
            user("Hello there, Ollama"),
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.25, top_k=20, max_output_tokens=50, stop_sequences=["\n\n"], seed=42
        ),
    )
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert response.message.role == content_pb2.ROLE_ASSISTANT
    assert [p.text for p in response.message.parts] == ["Hello there, Ollama"]
    assert response.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert response.raw_finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 3)
    assert response.usage.total_tokens == 8
    assert response.route.provider == "local"
    assert response.route.upstream_model == "llama3.2"

    assert len(env.fake.requests) == 1
    wire = env.fake.requests[0]
    assert (wire.method, wire.path) == ("POST", "/api/chat")
    assert wire.headers["authorization"] == f"Bearer {KEY}"
    assert wire.headers["content-type"] == "application/json"
    assert wire.json() == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there, Ollama"},
        ],
        "stream": False,
        "options": {
            "temperature": 0.25,
            "top_k": 20,
            "num_predict": 50,
            "seed": 42,
            "stop": ["\n\n"],
        },
        "keep_alive": "300s",
    }


async def test_stream_chat_text(env: Setup) -> None:
    text = "one two three four five"
    chunks = await _stream(env.gateway, chat_request(text, model="llama"))
    assert "".join(c.text_delta for c in chunks) == text
    assert [c.text_delta for c in chunks[:5]] == ["one", " two", " three", " four", " five"]
    finishes = [(i, c.finish_reason) for i, c in enumerate(chunks) if c.finish_reason]
    assert finishes == [(len(chunks) - 2, chat_pb2.FINISH_REASON_STOP)]
    assert chunks[-2].raw_finish_reason == "stop"
    assert [i for i, c in enumerate(chunks) if c.HasField("usage")] == [len(chunks) - 1]
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (5, 5)
    assert chunks[0].route.provider == "local"
    assert len({c.id for c in chunks}) == 1
    body = _body(env)
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": text}]
    assert env.fake.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_num_predict_gives_length(env: Setup) -> None:
    config = chat_pb2.GenerationConfig(max_output_tokens=2)
    request = chat_request("a b c d", model="llama", generation_config=config)
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert response.message.parts[0].text == "a b"
    assert (response.finish_reason, response.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_LENGTH,
        "length",
    )
    chunks = await _stream(env.gateway, request)
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_LENGTH]
    assert [_body(env, i)["options"] for i in (0, 1)] == [{"num_predict": 2}] * 2


async def test_tools_two_calls_unary_streamed_and_the_result_turn(env: Setup) -> None:
    tools = [_weather_tool(), _time_tool()]
    request = chat_request("Paris", model="llama", tools=tools)
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert response.finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    assert response.raw_finish_reason == "stop"
    calls = [p.tool_call for p in response.message.parts]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "Paris"}),
    ]
    assert calls[0].arguments == '{"city":"Paris"}'
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    assert _body(env)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
            },
        },
    ]

    chunks = await _stream(env.gateway, request)
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert [d.index for d in deltas] == [0, 1]
    assert [(d.name, d.arguments_delta) for d in deltas] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_time", '{"zone":"Paris"}'),
    ]
    assert all(d.id.startswith("call_") for d in deltas) and deltas[0].id != deltas[1].id
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]

    follow_up = chat_pb2.ChatRequest(
        model="llama",
        tools=tools,
        messages=[
            user("Paris"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[content_pb2.Part(tool_call=call) for call in calls],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(tool_call_id=calls[1].id, content="9am")
                    ),
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(
                            tool_call_id=calls[0].id, content='{"c":21}'
                        )
                    ),
                ],
            ),
        ],
    )
    answer = await env.gateway.stub.Chat(follow_up, timeout=5)
    assert answer.message.parts[0].text == 'get_weather returned {"c":21}'
    assert answer.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert _body(env)["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {
                    "id": calls[1].id,
                    "function": {"name": "get_time", "arguments": {"zone": "Paris"}},
                },
            ],
        },
        {"role": "tool", "content": "9am", "tool_name": "get_time", "tool_call_id": calls[1].id},
        {
            "role": "tool",
            "content": '{"c":21}',
            "tool_name": "get_weather",
            "tool_call_id": calls[0].id,
        },
    ]


async def test_forced_tool_choice_is_refused_before_any_call(env: Setup) -> None:
    request = chat_request(
        "Paris",
        model="llama",
        tools=[_weather_tool()],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(request, timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"
    assert list(details.violations) == ["tool_choice.mode"]
    assert env.fake.requests == []
    request.tool_choice.mode = content_pb2.TOOL_CHOICE_MODE_NONE
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert response.message.parts[0].text == "Paris"
    assert "tools" not in _body(env)


async def test_image_input_and_refused_image_url(env: Setup) -> None:
    png = b"\x89PNG\r\n\x1a\n-pixels-"
    message = user("what is this?")
    message.parts.add(image=content_pb2.Image(data=png, mime_type="image/png"))
    response = await env.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="llama", messages=[message]), timeout=5
    )
    assert response.message.parts[0].text == "[1 image(s)] what is this?"
    assert _body(env)["messages"] == [
        {"role": "user", "content": "what is this?", "images": [base64.b64encode(png).decode()]}
    ]

    env.fake.reset()
    linked = user("and this?")
    linked.parts.add(image=content_pb2.Image(url="https://example.test/cat.png"))
    for call in ("Chat", "StreamChat"):
        request = chat_pb2.ChatRequest(model="llama", messages=[linked])
        if call == "Chat":
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await env.gateway.stub.Chat(request, timeout=5)
            error = caught.value
        else:
            chunks, error = await _stream_error(env.gateway, request)
            assert chunks == []
        details = details_of(error)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert list(details.violations) == ["messages[0].parts[1].image.url"]
    assert env.fake.requests == []


async def test_json_object_and_json_schema_output(env: Setup) -> None:
    json_object = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    )
    response = await env.gateway.stub.Chat(
        chat_request("yes", model="llama", generation_config=json_object), timeout=5
    )
    assert json.loads(response.message.parts[0].text) == {"echo": "yes"}
    assert _body(env)["format"] == "json"

    schema = struct_pb2.Struct()
    schema.update(
        {
            "type": "object",
            "properties": {"answer": {"type": "string"}, "words": {"type": "integer"}},
            "required": ["answer"],
        }
    )
    config = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="reply", json_schema=schema
        )
    )
    chunks = await _stream(
        env.gateway, chat_request("yes sir", model="llama", generation_config=config)
    )
    assert json.loads("".join(c.text_delta for c in chunks)) == {"answer": "yes sir", "words": 2}
    assert _body(env)["format"] == {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "words": {"type": "integer"}},
        "required": ["answer"],
    }


async def test_reasoning_unary_and_streamed(env: Setup) -> None:
    config = chat_pb2.GenerationConfig(reasoning_budget_tokens=512)
    request = chat_request("why", model="llama", generation_config=config)
    response = await env.gateway.stub.Chat(request, timeout=5)
    assert [p.WhichOneof("kind") for p in response.message.parts] == ["reasoning", "text"]
    assert response.message.parts[0].reasoning.text == "Thinking about: why"
    assert response.usage.output_tokens == 1 + 3
    chunks = await _stream(env.gateway, request)
    assert "".join(c.reasoning_delta for c in chunks) == "Thinking about: why "
    assert "".join(c.text_delta for c in chunks) == "why"
    assert [_body(env, i)["think"] for i in (0, 1)] == [True, True]


async def test_embed(env: Setup) -> None:
    request = embed_pb2.EmbedRequest(
        model="llama-embed", inputs=["alpha beta", "gamma"], dimensions=3
    )
    response = await env.gateway.stub.Embed(request, timeout=5)
    assert [e.index for e in response.embeddings] == [0, 1]
    for got, text in zip(response.embeddings, ["alpha beta", "gamma"], strict=True):
        assert list(got.values) == pytest.approx(embedding(text, 3), abs=1e-6)
    assert response.usage.input_tokens == 3 and response.usage.total_tokens == 3
    assert response.route.provider == "local"
    wire = env.fake.requests[0]
    assert (wire.method, wire.path) == ("POST", "/api/embed")
    assert wire.headers["authorization"] == f"Bearer {KEY}"
    assert wire.json() == {
        "model": "nomic-embed-text",
        "input": ["alpha beta", "gamma"],
        "dimensions": 3,
        "keep_alive": "300s",
    }


# Edge cases of the wire ------------------------------------------------------------------


async def test_split_reads_crlf_blank_lines_no_final_newline_and_omitted_counts(env: Setup) -> None:
    lines = [
        chat_line("Grüße ", n=0),
        chat_line("世界 🌍", n=1),
        chat_line(n=2, done=True, done_reason="length", eval_count=2),
    ]
    for piece in (1, 3, 7):
        body = ndjson(lines, line_ending="\r\n", final_newline=False, blank_lines=True)
        env.fake.script(ndjson_response(body, piece_size=piece))
        chunks = await _stream(env.gateway, chat_request("x", model="llama"))
        assert "".join(c.text_delta for c in chunks) == "Grüße 世界 🌍"
        assert [c.finish_reason for c in chunks if c.finish_reason] == [
            chat_pb2.FINISH_REASON_LENGTH
        ]
        usage = chunks[-1].usage
        # The reported output stays; the omitted input count is estimated ("x": 1 token
        # and 4 for the message) and marked.
        assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 2, 7)
        assert usage.estimated


async def test_coalesced_lines_large_line_and_request_id(env: Setup) -> None:
    big = "x" * 100_000
    body = ndjson([chat_line(big), *text_lines(["!"], prompt_eval_count=4)])
    response = ndjson_response(body)
    response.headers["x-request-id"] = "ollama-req-9"
    env.fake.script(response)
    chunks = await _stream(env.gateway, chat_request("x", model="llama"))
    assert "".join(c.text_delta for c in chunks) == big + "!"
    assert chunks[0].route.upstream_request_id == "ollama-req-9"
    assert chunks[-1].usage.input_tokens == 4

    env.fake.script(
        FakeResponse.json(
            chat_line("hi", done=True, done_reason="stop"), headers={"x-request-id": "r-2"}
        )
    )
    unary = await env.gateway.stub.Chat(chat_request("x", model="llama"), timeout=5)
    assert unary.route.upstream_request_id == "r-2"
    # No counts at all: both estimated ("hi" answered: 2 bytes, 1 token) and marked.
    assert (unary.usage.input_tokens, unary.usage.output_tokens) == (5, 1)
    assert unary.usage.estimated


async def test_connection_close_then_reuse(env: Setup) -> None:
    env.fake.script(
        FakeResponse(
            200,
            {"content-type": "application/json"},
            [Write(json.dumps(chat_line("one", done=True, done_reason="stop")).encode())],
            close=True,
        )
    )
    first = await env.gateway.stub.Chat(chat_request("x", model="llama"), timeout=5)
    second = await env.gateway.stub.Chat(chat_request("two", model="llama"), timeout=5)
    assert [first.message.parts[0].text, second.message.parts[0].text] == ["one", "two"]


async def test_slow_first_byte_within_and_beyond_the_read_timeout(env: Setup) -> None:
    slow = line_writes(text_lines(["late"]))
    slow.header_delay = 0.3
    env.fake.script(slow)
    chunks = await _stream(env.gateway, chat_request("x", model="llama"))
    assert "".join(c.text_delta for c in chunks) == "late"

    too_slow = line_writes(text_lines(["never"]))
    too_slow.header_delay = 1.5
    env.fake.script(too_slow)
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    details = details_of(error)
    assert chunks == []
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
    )


async def test_stall_mid_stream_ends_in_an_error_after_the_chunks(env: Setup) -> None:
    lines = text_lines(["a", "b"])
    stalled = FakeResponse.stream(
        [ndjson([lines[0]]), ndjson([lines[1]]), ndjson([lines[2]])], content_type=NDJSON
    )
    stalled.writes[1].delay = 1.5
    env.fake.script(stalled)
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert [c.text_delta for c in chunks] == ["a"]
    details = details_of(error)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info.reason == "UPSTREAM_TIMEOUT"
    assert details.error_info.metadata["partialOutput"] == "true"


# Errors ------------------------------------------------------------------------------------


ERROR_CASES = [
    (
        error_response(429, "too many requests", {"retry-after": "2"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        2.0,
    ),
    (
        error_response(500, "llama runner process has terminated"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_INTERNAL",
        None,
    ),
    (
        error_response(503, "server busy", {"retry-after": "1"}),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        1.0,
    ),
    (
        error_response(400, "the input length exceeds the context length"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        None,
    ),
    (
        error_response(400, "invalid options"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
        None,
    ),
    (
        FakeResponse.raw(
            b"<html><h1>502 Bad Gateway</h1></html>", status=502, content_type="text/html"
        ),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_BAD_GATEWAY",
        None,
    ),
    (FakeResponse.raw(b"", status=504), grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT", None),
    (
        gzip_error_response(404, "model 'llama3.2' not found"),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        None,
    ),
]


@pytest.mark.parametrize(("scripted", "code", "reason", "retry_after"), ERROR_CASES)
async def test_mapped_http_errors_unary_and_stream(
    env: Setup,
    scripted: FakeResponse,
    code: grpc.StatusCode,
    reason: str,
    retry_after: float | None,
) -> None:
    env.fake.script(scripted, scripted)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(chat_request("x", model="llama"), timeout=5)
    chunks, stream_error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert chunks == []
    for error in (caught.value, stream_error):
        details = details_of(error)
        assert (details.code, details.error_info.reason) == (code, reason)
        assert details.error_info.metadata["provider"] == "local"
        assert details.error_info.metadata["upstreamStatus"] == str(scripted.status)
        if retry_after is None:
            assert details.retry_info is None
        else:
            assert details.retry_info is not None
            assert details.retry_info.retry_delay.ToTimedelta().total_seconds() == retry_after
        assert "partialOutput" not in details.error_info.metadata
    assert len(env.fake.requests) == 2


async def test_model_not_found_from_the_fake_itself(env: Setup) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Chat(chat_request("x", model="ghost"), timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    assert details.error_info.metadata["model"] == "ghost-model"
    assert _body(env)["model"] == "ghost-model"


async def test_error_json_with_200_on_a_stream_request(env: Setup) -> None:
    env.fake.script(FakeResponse.json({"error": "model 'llama3.2' not found"}))
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    details = details_of(error)
    assert chunks == []
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )

    env.fake.script(FakeResponse.json({"error": "something broke"}))
    _, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert (details_of(error).code, details_of(error).error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_BAD_GATEWAY",
    )


async def test_mid_stream_error_line_after_content(env: Setup) -> None:
    lines = [
        chat_line("Hel", n=0),
        chat_line("lo", n=1),
        {"error": "an error was encountered while running the model"},
    ]
    env.fake.script(line_writes(lines))
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert [c.text_delta for c in chunks] == ["Hel", "lo"]
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_INTERNAL",
    )
    assert details.error_info.metadata["partialOutput"] == "true"
    assert details.error_info.metadata["chunksDelivered"] == "2"
    assert details.error_info.metadata["upstreamType"] == "stream_error"


async def test_error_line_before_content(env: Setup) -> None:
    env.fake.script(
        ndjson_response(ndjson([{"error": "the prompt is longer than the context length"}]))
    )
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    details = details_of(error)
    assert chunks == []
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
    )
    assert "partialOutput" not in details.error_info.metadata


async def test_truncated_stream_and_reset_never_end_ok(env: Setup) -> None:
    lines = text_lines(["one", "two"])[:-1]  # no done:true line
    env.fake.script(line_writes(lines))
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert [c.text_delta for c in chunks] == ["one", "two"]
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_STREAM_TRUNCATED",
    )
    assert details.error_info.metadata["partialOutput"] == "true"

    env.fake.script(line_writes(text_lines(["one", "two", "three"]), reset_after=2))
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert [c.text_delta for c in chunks] == ["one", "two"]
    assert details_of(error).code == grpc.StatusCode.UNAVAILABLE
    assert not any(c.finish_reason for c in chunks)


async def test_malformed_json_is_internal(env: Setup) -> None:
    pieces = [ndjson([chat_line("ok")]), b'{"model":"llama3.2",\n']
    env.fake.script(FakeResponse.stream(pieces, content_type=NDJSON, delay=0.05))
    chunks, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert [c.text_delta for c in chunks] == ["ok"]
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )

    env.fake.script(
        FakeResponse.raw(b'{"model": "llama3.2", "message": ', content_type="application/json"),
        FakeResponse.json({"model": "llama3.2", "message": {"content": 5}, "done": True}),
        ndjson_response(b"\xff\xfe\n"),
    )
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.gateway.stub.Chat(chat_request("x", model="llama"), timeout=5)
        assert details_of(caught.value).error_info.reason == "UPSTREAM_PROTOCOL_ERROR"
        assert caught.value.code() == grpc.StatusCode.INTERNAL
    _, error = await _stream_error(env.gateway, chat_request("x", model="llama"))
    assert (details_of(error).code, details_of(error).error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )


async def test_embed_errors(env: Setup) -> None:
    env.fake.script(
        error_response(429, "slow down", {"retry-after-ms": "250"}),
        FakeResponse.json({"model": "nomic-embed-text", "embeddings": "nope"}),
    )
    request = embed_pb2.EmbedRequest(model="llama-embed", inputs=["a"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Embed(request, timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert details.retry_info is not None
    assert details.retry_info.retry_delay.ToTimedelta().total_seconds() == 0.25
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.gateway.stub.Embed(request, timeout=5)
    assert details_of(caught.value).error_info.reason == "UPSTREAM_PROTOCOL_ERROR"


# Auth --------------------------------------------------------------------------------------


async def test_wrong_key_is_upstream_auth_failed_and_no_key_sends_no_header() -> None:
    config = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: keyed, base_url: "{keyed}", api_key_env: OLLAMA_WRONG_KEY, ollama: {{}}}}
  - {{name: open, base_url: "{open}", ollama: {{}}}}
models:
  - {{alias: keyed, provider: keyed, upstream_model: llama3.2}}
  - {{alias: open, provider: open, upstream_model: llama3.2}}
"""
    async with OllamaFake(api_key=KEY) as keyed, OllamaFake() as open_fake:
        text = config.format(keyed=keyed.url, open=open_fake.url)
        async with running_gateway(text, environ={"OLLAMA_WRONG_KEY": "not-the-key"}) as gateway:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request("x", model="keyed"), timeout=5)
            details = details_of(caught.value)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.INTERNAL,
                "UPSTREAM_AUTH_FAILED",
            )
            assert details.error_info.metadata["upstreamStatus"] == "401"
            assert "not-the-key" not in details.message
            assert keyed.requests[0].headers["authorization"] == "Bearer not-the-key"

            response = await gateway.stub.Chat(chat_request("open door", model="open"), timeout=5)
            assert response.message.parts[0].text == "open door"
            assert "authorization" not in open_fake.requests[0].headers
            assert "keep_alive" not in open_fake.requests[0].json()
