"""Ollama's pure transforms on recorded wire data (reference §6), both directions."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.errors import GatewayError
from service.providers.base import Deployment
from service.providers.framing import NdjsonDecoder
from service.providers.http import HttpResponse
from service.providers.http_provider import HttpProvider
from service.providers.ollama import (
    OllamaDialect,
    call_id,
    create_ollama,
    go_duration,
)
from service.providers.registry import factory_for

DEPLOYMENT = Deployment(
    alias="llama",
    provider="local",
    provider_type="ollama",
    upstream_model="llama3.2",
    capabilities=OllamaDialect.default_capabilities,
)
DIALECT = OllamaDialect("local")
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _text(role: content_pb2.Role.ValueType, text: str) -> content_pb2.Message:
    return content_pb2.Message(role=role, parts=[content_pb2.Part(text=text)])


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, headers or {"content-type": "application/json"}, raw)


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}


# Requests ----------------------------------------------------------------------------


def test_full_chat_request_golden() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    user = _text(content_pb2.ROLE_USER, "What is in this picture?")
    user.parts.add(image=content_pb2.Image(data=png, mime_type="image/png"))
    user.parts.add(image=content_pb2.Image(url="data:image/jpeg;base64,/9j/4AAQ"))
    assistant = content_pb2.Message(
        role=content_pb2.ROLE_ASSISTANT,
        parts=[
            content_pb2.Part(reasoning=content_pb2.Reasoning(text="The user wants weather.")),
            content_pb2.Part(text="Checking."),
            content_pb2.Part(
                tool_call=content_pb2.ToolCall(
                    id="call_1", name="get_weather", arguments='{"city": "Tokyo", "days": 2}'
                )
            ),
            content_pb2.Part(
                tool_call=content_pb2.ToolCall(id="call_2", name="get_time", arguments="")
            ),
        ],
    )
    results = content_pb2.Message(
        role=content_pb2.ROLE_TOOL,
        parts=[
            content_pb2.Part(
                tool_result=content_pb2.ToolResult(tool_call_id="call_1", content='{"c":21}')
            ),
            content_pb2.Part(
                tool_result=content_pb2.ToolResult(
                    tool_call_id="call_2", name="clock", content="noon", is_error=True
                )
            ),
        ],
    )
    request = chat_pb2.ChatRequest(
        model="llama",
        messages=[
            _text(content_pb2.ROLE_SYSTEM, "Be brief."),
            user,
            assistant,
            results,
            _text(content_pb2.ROLE_USER, "And tomorrow?"),
        ],
        tools=[
            content_pb2.Tool(
                name="get_weather",
                description="Weather by city",
                parameters=_struct(WEATHER_SCHEMA),
            ),
            content_pb2.Tool(name="get_time"),
        ],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO),
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            max_output_tokens=128,
            seed=7,
            stop_sequences=["END", "STOP"],
            presence_penalty=0.25,
            frequency_penalty=-0.5,
            reasoning_budget_tokens=1024,
            response_format=chat_pb2.ResponseFormat(
                type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                schema_name="weather",
                json_schema=_struct(WEATHER_SCHEMA),
            ),
        ),
    )
    spec = OllamaDialect("local", keep_alive="300s").chat_request(request, DEPLOYMENT, stream=True)
    assert (spec.method, spec.url, dict(spec.headers)) == ("POST", "api/chat", {})
    assert spec.json_body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": "What is in this picture?",
                "images": [base64.b64encode(png).decode(), "/9j/4AAQ"],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "thinking": "The user wants weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "function": {
                            "name": "get_weather",
                            "arguments": {"city": "Tokyo", "days": 2},
                        },
                    },
                    {"id": "call_2", "function": {"name": "get_time", "arguments": {}}},
                ],
            },
            {
                "role": "tool",
                "content": '{"c":21}',
                "tool_name": "get_weather",
                "tool_call_id": "call_1",
            },
            {"role": "tool", "content": "noon", "tool_name": "clock", "tool_call_id": "call_2"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "stream": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": WEATHER_SCHEMA,
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ],
        "format": WEATHER_SCHEMA,
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "num_predict": 128,
            "seed": 7,
            "presence_penalty": 0.25,
            "frequency_penalty": -0.5,
            "stop": ["END", "STOP"],
        },
        "think": True,
        "keep_alive": "300s",
    }
    # Whole numbers in schemas stay integers on the wire.
    for schema in (spec.json_body["format"], spec.json_body["tools"][0]["function"]["parameters"]):
        assert type(schema["properties"]["days"]["minimum"]) is int


def test_minimal_request_json_object_and_no_stream() -> None:
    request = chat_pb2.ChatRequest(
        model="llama",
        messages=[_text(content_pb2.ROLE_USER, "hi")],
        generation_config=chat_pb2.GenerationConfig(
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        ),
    )
    spec = DIALECT.chat_request(request, DEPLOYMENT, stream=False)
    assert spec.json_body == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "format": "json",
    }


def test_text_format_sends_no_format_and_zero_values_are_sent_when_set() -> None:
    request = chat_pb2.ChatRequest(
        model="llama",
        messages=[_text(content_pb2.ROLE_USER, "a"), _text(content_pb2.ROLE_USER, "b")],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.0,
            seed=0,
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_TEXT),
        ),
    )
    body = DIALECT.chat_request(request, DEPLOYMENT, stream=True).json_body
    assert body["options"] == {"temperature": 0.0, "seed": 0}
    assert "format" not in body and "think" not in body and "keep_alive" not in body
    assert [m["content"] for m in body["messages"]] == ["a", "b"]


def test_tool_choice_none_drops_tools_and_forced_choices_are_refused() -> None:
    tools = [content_pb2.Tool(name="get_weather", parameters=_struct(WEATHER_SCHEMA))]
    none = chat_pb2.ChatRequest(
        model="llama",
        messages=[_text(content_pb2.ROLE_USER, "hi")],
        tools=tools,
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_NONE),
    )
    assert "tools" not in DIALECT.chat_request(none, DEPLOYMENT, stream=False).json_body
    for choice, field in (
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED), "tool_choice.mode"),
        (content_pb2.ToolChoice(tool_name="get_weather"), "tool_choice.tool_name"),
    ):
        forced = chat_pb2.ChatRequest(
            model="llama", messages=[_text(content_pb2.ROLE_USER, "hi")], tools=tools
        )
        forced.tool_choice.CopyFrom(choice)
        with pytest.raises(GatewayError) as caught:
            DIALECT.chat_request(forced, DEPLOYMENT, stream=False)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "CAPABILITY_UNSUPPORTED"
        assert [v.field for v in caught.value.field_violations] == [field]


def test_image_urls_and_bad_arguments_are_refused_naming_each_field() -> None:
    user = _text(content_pb2.ROLE_USER, "look")
    user.parts.add(image=content_pb2.Image(url="https://example.test/cat.png"))
    user.parts.add(image=content_pb2.Image(url="data:image/png;base64,not base64!"))
    user.parts.add(image=content_pb2.Image(url="data:image/png,rawbytes"))
    assistant = content_pb2.Message(
        role=content_pb2.ROLE_ASSISTANT,
        parts=[
            content_pb2.Part(tool_call=content_pb2.ToolCall(id="c1", name="f", arguments="{bad")),
            content_pb2.Part(tool_call=content_pb2.ToolCall(id="c2", name="f", arguments="[1]")),
        ],
    )
    request = chat_pb2.ChatRequest(model="llama", messages=[user, assistant])
    with pytest.raises(GatewayError) as caught:
        DIALECT.chat_request(request, DEPLOYMENT, stream=True)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_REQUEST"
    assert [v.field for v in caught.value.field_violations] == [
        "messages[0].parts[1].image.url",
        "messages[0].parts[2].image.url",
        "messages[0].parts[3].image.url",
        "messages[1].parts[0].tool_call.arguments",
        "messages[1].parts[1].tool_call.arguments",
    ]
    assert "cannot fetch" in caught.value.field_violations[0].description


def test_tool_message_with_text_keeps_the_text_and_unknown_names_are_left_out() -> None:
    message = content_pb2.Message(
        role=content_pb2.ROLE_TOOL,
        parts=[
            content_pb2.Part(text="note"),
            content_pb2.Part(tool_result=content_pb2.ToolResult(tool_call_id="x", content="1")),
        ],
    )
    body = DIALECT.chat_request(
        chat_pb2.ChatRequest(model="llama", messages=[message]), DEPLOYMENT, stream=True
    ).json_body
    assert body["messages"] == [
        {"role": "tool", "content": "note"},
        {"role": "tool", "content": "1", "tool_call_id": "x"},
    ]


def test_embed_request_golden() -> None:
    request = embed_pb2.EmbedRequest(model="llama-embed", inputs=["first", "second"], dimensions=2)
    embed_deployment = Deployment(
        "llama-embed", "local", "ollama", "nomic-embed-text", DIALECT.default_capabilities
    )
    spec = OllamaDialect("local", keep_alive="5m0s").embed_request(request, embed_deployment)
    assert (spec.method, spec.url) == ("POST", "api/embed")
    assert spec.json_body == {
        "model": "nomic-embed-text",
        "input": ["first", "second"],
        "dimensions": 2,
        "keep_alive": "5m0s",
    }
    plain = DIALECT.embed_request(embed_pb2.EmbedRequest(inputs=["x"]), embed_deployment)
    assert plain.json_body == {"model": "nomic-embed-text", "input": ["x"]}


@pytest.mark.parametrize(
    ("seconds", "nanos", "text"),
    [
        (300, 0, "300s"),
        (1, 500_000_000, "1.5s"),
        (0, 1_000, "0.000001s"),
        (-1, 0, "-1s"),
        (0, 0, "0s"),
    ],
)
def test_keep_alive_as_go_duration(seconds: int, nanos: int, text: str) -> None:
    assert go_duration(duration_pb2.Duration(seconds=seconds, nanos=nanos)) == text


async def test_factory_headers_base_url_and_keep_alive() -> None:
    assert factory_for("ollama") is create_ollama
    keyed = config_pb2.ProviderConfig(name="cloud", api_key_env="OLLAMA_KEY")
    keyed.ollama.keep_alive.FromSeconds(90)
    provider = create_ollama(keyed, {"OLLAMA_KEY": "k-123"})
    assert isinstance(provider, HttpProvider)
    assert provider.kind == "ollama"
    assert provider.client.settings.base_url == "http://localhost:11434/"
    assert dict(provider.client.settings.headers) == {"Authorization": "Bearer k-123"}
    assert isinstance(provider.dialect, OllamaDialect)
    assert provider.dialect.keep_alive == "90s"
    assert provider.default_capabilities.vision and not provider.default_capabilities.embeddings
    await provider.aclose()

    local = config_pb2.ProviderConfig(name="local", base_url="http://box:11434")
    local.ollama.SetInParent()
    provider = create_ollama(local, {"OLLAMA_KEY": "unused"})
    assert isinstance(provider, HttpProvider) and isinstance(provider.dialect, OllamaDialect)
    assert provider.client.settings.base_url == "http://box:11434/"
    assert dict(provider.client.settings.headers) == {}
    assert provider.dialect.keep_alive is None
    await provider.aclose()


# Non-streaming responses ---------------------------------------------------------------

REFERENCE_TOOL_RESPONSE = {
    "model": "llama3.2",
    "created_at": "2026-01-01T00:00:00.123Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"function": {"index": 1, "name": "get_time", "arguments": {"zone": "Asia/東京"}}},
        ],
    },
    "done": True,
    "done_reason": "stop",
    "total_duration": 3244883583,
    "load_duration": 2969184542,
    "prompt_eval_count": 169,
    "prompt_eval_duration": 141656333,
    "eval_count": 18,
    "eval_duration": 133293625,
}


def test_parse_tool_call_response_golden() -> None:
    result = DIALECT.parse_chat(_response(REFERENCE_TOOL_RESPONSE), DEPLOYMENT)
    created = "2026-01-01T00:00:00.123Z"
    expected = chat_pb2.ChatResponse(
        message=content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT,
            parts=[
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(
                        id=call_id(created, "llama3.2", 0),
                        name="get_weather",
                        arguments='{"city":"Tokyo"}',
                    )
                ),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(
                        id=call_id(created, "llama3.2", 1),
                        name="get_time",
                        arguments='{"zone":"Asia/東京"}',
                    )
                ),
            ],
        ),
        finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS,
        raw_finish_reason="stop",
        usage=route_pb2.Usage(input_tokens=169, output_tokens=18, total_tokens=187),
    )
    assert result == expected
    ids = [p.tool_call.id for p in result.message.parts]
    assert ids[0] != ids[1] and all(i.startswith("call_") and len(i) == 29 for i in ids)
    # Deterministic: the same response gives the same ids.
    again = DIALECT.parse_chat(_response(REFERENCE_TOOL_RESPONSE), DEPLOYMENT)
    assert [p.tool_call.id for p in again.message.parts] == ids


def test_parse_text_with_thinking_and_upstream_ids() -> None:
    body = {
        "model": "qwen3",
        "created_at": "2026-01-01T00:00:01Z",
        "message": {
            "role": "assistant",
            "content": "It is 4.",
            "thinking": "2+2 is 4.",
            "tool_calls": [
                {"id": "call_up1", "function": {"name": "calc", "arguments": '{"x":1}'}}
            ],
        },
        "done": True,
        "done_reason": "stop",
        "eval_count": 9,
    }
    result = DIALECT.parse_chat(_response(body), DEPLOYMENT)
    assert [p.WhichOneof("kind") for p in result.message.parts] == [
        "reasoning",
        "text",
        "tool_call",
    ]
    assert result.message.parts[0].reasoning.text == "2+2 is 4."
    assert result.message.parts[1].text == "It is 4."
    assert result.message.parts[2].tool_call == content_pb2.ToolCall(
        id="call_up1", name="calc", arguments='{"x":1}'
    )
    assert result.usage == route_pb2.Usage(input_tokens=0, output_tokens=9, total_tokens=9)


@pytest.mark.parametrize(
    ("done_reason", "finish"),
    [
        ("stop", chat_pb2.FINISH_REASON_STOP),
        ("length", chat_pb2.FINISH_REASON_LENGTH),
        ("load", chat_pb2.FINISH_REASON_OTHER),
        (None, chat_pb2.FINISH_REASON_OTHER),
    ],
)
def test_done_reasons(done_reason: str | None, finish: int) -> None:
    body: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "Hello"},
        "done": True,
    }
    if done_reason is not None:
        body["done_reason"] = done_reason
    result = DIALECT.parse_chat(_response(body), DEPLOYMENT)
    assert result.finish_reason == finish
    assert result.raw_finish_reason == (done_reason or "")
    assert [p.text for p in result.message.parts] == ["Hello"]
    assert result.usage == route_pb2.Usage()


def test_error_envelope_with_200_is_mapped_not_parsed() -> None:
    body = {"error": "model 'llama3.2' not found"}
    with pytest.raises(GatewayError) as caught:
        DIALECT.parse_chat(_response(body), DEPLOYMENT)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "MODEL_NOT_FOUND"
    with pytest.raises(GatewayError) as embed_caught:
        DIALECT.parse_embed(_response({"error": "boom"}), DEPLOYMENT)
    assert embed_caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert embed_caught.value.reason == "UPSTREAM_BAD_GATEWAY"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"message":{"content":"x"},"done":false}',
        b'{"done":true}',
        b'{"message":"text","done":true}',
        b'{"message":{"content":5},"done":true}',
        b'{"message":{"tool_calls":[{"function":{"arguments":{}}}]},"done":true}',
        b'{"message":{"tool_calls":[{"function":{"name":"f","arguments":[1]}}]},"done":true}',
        b'{"message":{"content":"x"},"done":true,"eval_count":"9"}',
    ],
)
def test_malformed_chat_bodies_raise_protocol_errors(body: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        DIALECT.parse_chat(_response(body), DEPLOYMENT)


def test_parse_embed_golden() -> None:
    body = {
        "model": "nomic-embed-text",
        "embeddings": [[0.5, -0.25, 1], [0.0, 0.125, -1]],
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": 8,
    }
    result = DIALECT.parse_embed(_response(body), DEPLOYMENT)
    assert result == embed_pb2.EmbedResponse(
        embeddings=[
            embed_pb2.Embedding(index=0, values=[0.5, -0.25, 1.0]),
            embed_pb2.Embedding(index=1, values=[0.0, 0.125, -1.0]),
        ],
        usage=route_pb2.Usage(input_tokens=8, total_tokens=8),
    )
    for bad in (b'{"embeddings":"x"}', b'{"embeddings":[["a"]]}', b'{"model":"m"}'):
        with pytest.raises((ValueError, KeyError, TypeError)):
            DIALECT.parse_embed(_response(bad), DEPLOYMENT)


# Streams -------------------------------------------------------------------------------

REFERENCE_STREAM = (
    b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00.1Z","message":{"role":"assistant","content":"Hel"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00.2Z","message":{"role":"assistant","content":"lo"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2026-01-01T00:00:00.3Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":2,"eval_duration":45359900}\n'
)


def _run_stream(data: bytes, piece: int = 0) -> list[chat_pb2.StreamChatResponse]:
    """Decodes like the transport does and returns every chunk, finish() included."""
    decoder = NdjsonDecoder()
    parser = DIALECT.stream_parser(DEPLOYMENT)
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    chunks: list[chat_pb2.StreamChatResponse] = []
    for raw in pieces:
        for event in decoder.feed(raw):
            chunks.extend(parser.feed(event))
        if parser.terminated:
            break
    else:
        for event in decoder.close():
            chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return chunks


def test_reference_stream_golden() -> None:
    chunks = _run_stream(REFERENCE_STREAM)
    assert chunks == [
        chat_pb2.StreamChatResponse(text_delta="Hel"),
        chat_pb2.StreamChatResponse(text_delta="lo"),
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_STOP, raw_finish_reason="stop"
        ),
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=26, output_tokens=2, total_tokens=28)
        ),
    ]


def test_stream_with_thinking_and_two_tool_calls_across_lines() -> None:
    lines = [
        {
            "model": "qwen3",
            "created_at": "t1",
            "message": {"role": "assistant", "content": "", "thinking": "Hmm"},
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "t2",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "function": {
                            "index": 0,
                            "name": "get_weather",
                            "arguments": {"city": "Paris"},
                        }
                    }
                ],
            },
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "t3",
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_up", "function": {"index": 1, "name": "get_time", "arguments": {}}}
                ],
            },
            "done": False,
        },
        {
            "model": "qwen3",
            "created_at": "t4",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 30,
            "eval_count": 12,
        },
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    chunks = _run_stream(data)
    assert chunks == [
        chat_pb2.StreamChatResponse(reasoning_delta="Hmm"),
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[
                chat_pb2.ToolCallDelta(
                    index=0,
                    id=call_id("t2", "llama3.2", 0),
                    name="get_weather",
                    arguments_delta='{"city":"Paris"}',
                )
            ]
        ),
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[
                chat_pb2.ToolCallDelta(index=1, id="call_up", name="get_time", arguments_delta="{}")
            ]
        ),
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS, raw_finish_reason="stop"
        ),
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=30, output_tokens=12, total_tokens=42)
        ),
    ]


def test_two_calls_in_one_line_get_positions_zero_and_one() -> None:
    line = {
        "model": "llama3.2",
        "created_at": "t",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "a", "arguments": {"q": "x"}}},
                {"function": {"name": "b", "arguments": {"q": "y"}}},
            ],
        },
        "done": True,
        "done_reason": "stop",
    }
    chunks = _run_stream(json.dumps(line).encode())
    deltas = chunks[0].tool_call_deltas
    assert [(d.index, d.name, d.arguments_delta) for d in deltas] == [
        (0, "a", '{"q":"x"}'),
        (1, "b", '{"q":"y"}'),
    ]
    assert deltas[0].id != deltas[1].id
    assert chunks[0].finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    assert chunks[-1].usage == route_pb2.Usage()  # counts omitted → 0


def test_length_and_missing_final_newline_and_crlf() -> None:
    data = (
        b'{"model":"llama3.2","created_at":"a","message":{"role":"assistant","content":"caf\xc3\xa9 \xf0\x9f\x8c\x8d"},"done":false}\r\n'
        b"\r\n"
        b'{"model":"llama3.2","created_at":"b","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","eval_count":3}'
    )
    for piece in (0, 1, 2, 3, 5, 7, 64):
        chunks = _run_stream(data, piece)
        assert [c.text_delta for c in chunks if c.text_delta] == ["café 🌍"], piece
        assert chunks[-2].finish_reason == chat_pb2.FINISH_REASON_LENGTH
        assert chunks[-2].raw_finish_reason == "length"
        assert chunks[-1].usage == route_pb2.Usage(output_tokens=3, total_tokens=3)


def test_unknown_fields_are_ignored() -> None:
    line = {
        "model": "llama3.2",
        "created_at": "a",
        "message": {"role": "assistant", "content": "hi", "images": None, "future": 1},
        "done": True,
        "done_reason": "stop",
        "logprobs": [{"token": "hi", "logprob": -0.1}],
        "remote_host": "x",
    }
    chunks = _run_stream(json.dumps(line).encode() + b"\n")
    assert chunks[0] == chat_pb2.StreamChatResponse(
        text_delta="hi", finish_reason=chat_pb2.FINISH_REASON_STOP, raw_finish_reason="stop"
    )


@given(st.text(max_size=60), st.integers(min_value=1, max_value=9))
@settings(max_examples=60, deadline=None)
def test_any_text_split_anywhere_reassembles(text: str, piece: int) -> None:
    words = [text[i : i + 4] for i in range(0, len(text), 4)]
    data = (
        b"".join(
            json.dumps(
                {"model": "m", "created_at": "t", "message": {"content": w}, "done": False},
                ensure_ascii=False,
            ).encode()
            + b"\n"
            for w in words
        )
        + b'{"model":"m","created_at":"t","message":{"content":""},"done":true,"done_reason":"stop"}\n'
    )
    chunks = _run_stream(data, piece)
    assert "".join(c.text_delta for c in chunks) == text
    assert sum(1 for c in chunks if c.finish_reason) == 1


def test_eof_before_done_is_truncated() -> None:
    with pytest.raises(GatewayError) as caught:
        _run_stream(REFERENCE_STREAM.splitlines(keepends=True)[0])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "UPSTREAM_STREAM_TRUNCATED"
    with pytest.raises(GatewayError):
        _run_stream(b"")


@pytest.mark.parametrize(
    ("message", "code", "reason", "status"),
    [
        (
            "an error was encountered while running the model",
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_INTERNAL",
            "500",
        ),
        ("model 'llama3.2' not found", grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", "404"),
        (
            "the prompt is longer than the context length currently available to the model; reduce it",
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
            "400",
        ),
    ],
)
def test_error_lines_before_and_after_content(
    message: str, code: grpc.StatusCode, reason: str, status: str
) -> None:
    error = json.dumps({"error": message}).encode() + b"\n"
    first_line = REFERENCE_STREAM.splitlines(keepends=True)[0]
    for data in (error, first_line + error):
        parser = DIALECT.stream_parser(DEPLOYMENT)
        delivered: list[chat_pb2.StreamChatResponse] = []
        with pytest.raises(GatewayError) as caught:
            for event in NdjsonDecoder().feed(data):
                delivered.extend(parser.feed(event))
        assert caught.value.code == code
        assert caught.value.reason == reason
        assert caught.value.metadata == {
            "provider": "local",
            "model": "llama3.2",
            "upstreamStatus": status,
            "upstreamType": "stream_error",
            # Ollama's own words reach the caller for its mistakes (4xx), not for 5xx.
            **({"upstreamMessage": message} if status != "500" else {}),
        }
        assert [c.text_delta for c in delivered] == (["Hel"] if data != error else [])


@pytest.mark.parametrize("event", [[1], "text", {"message": {"content": "x"}}, {"done": "yes"}])
def test_malformed_stream_events_raise(event: Any) -> None:
    with pytest.raises((TypeError, ValueError, KeyError)):
        DIALECT.stream_parser(DEPLOYMENT).feed(event)


# Errors --------------------------------------------------------------------------------

JSON = {"content-type": "application/json; charset=utf-8"}


# fmt: off
ERROR_CASES = [
    (404, JSON, b'{"error":"model \'llama3\' not found"}', grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", None),
    (400, JSON, b'{"error":"invalid options"}', grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", None),
    (400, JSON, b'{"error":"the input length exceeds the context length"}', grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", None),
    (429, {**JSON, "retry-after": "7"}, b'{"error":"too many requests"}', grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 7.0),
    (429, {**JSON, "retry-after-ms": "1500", "retry-after": "9"}, b'{"error":"slow down"}', grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 1.5),
    (429, {**JSON, "retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"}, b'{"error":"slow down"}', grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 30.0),
    (429, JSON, b'{"error":"rate limited, please try again in 2s"}', grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 2.0),
    (500, JSON, b'{"error":"llama runner process has terminated"}', grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL", None),
    (503, {**JSON, "retry-after": "3"}, b'{"error":"server busy"}', grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 3.0),
    (502, {"content-type": "text/html"}, b"<html><body>Bad Gateway</body></html>", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BAD_GATEWAY", None),
    (502, JSON, b'{"error":"model \'x\' not found"}', grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", None),
    (504, {"content-type": "text/plain"}, b"", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT", None),
    (401, JSON, b'{"error":"unauthorized"}', grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH_FAILED", None),
    (403, JSON, b'{"error":{"message":"forbidden","type":"x"}}', grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_PERMISSION_DENIED", None),
    (400, JSON, b'\xff\xfe', grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", None),
    (418, JSON, b'["teapot"]', grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_CLIENT_ERROR", None),
]
# fmt: on


@pytest.mark.parametrize(
    ("status", "headers", "body", "code", "reason", "retry_after"), ERROR_CASES
)
def test_error_bodies(
    status: int,
    headers: dict[str, str],
    body: bytes,
    code: grpc.StatusCode,
    reason: str,
    retry_after: float | None,
) -> None:
    error = DIALECT.parse_error(HttpResponse(status, headers, body), DEPLOYMENT, NOW)
    assert (error.code, error.reason) == (code, reason)
    assert error.retry_after == (pytest.approx(retry_after) if retry_after is not None else None)
    assert error.metadata["provider"] == "local"
    assert error.metadata["model"] == "llama3.2"
    # A model-not-found envelope that came with a non-error status is reported as 404.
    expected_status = "404" if reason == "MODEL_NOT_FOUND" else str(status)
    assert error.metadata["upstreamStatus"] == expected_status
    assert "upstreamType" not in error.metadata
    # Upstream text never reaches the caller's message.
    assert body.decode("utf-8", "replace") not in error.message or not body


def test_request_id_header_is_kept_in_error_metadata() -> None:
    headers = {**JSON, "x-request-id": "req-77"}
    error = DIALECT.parse_error(HttpResponse(500, headers, b'{"error":"x"}'), DEPLOYMENT, NOW)
    assert error.metadata["upstreamRequestId"] == "req-77"
    assert OllamaDialect.request_id_header == "x-request-id"
