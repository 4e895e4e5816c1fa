"""Golden tests of the Anthropic dialect's pure transforms on wire data (reference §4)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, route_pb2

from service.errors import GatewayError
from service.providers import registry
from service.providers.anthropic import AnthropicDialect, create_anthropic
from service.providers.anthropic_response import AnthropicStreamParser
from service.providers.base import Capabilities, Deployment
from service.providers.framing import SseDecoder, SseEvent
from service.providers.http import HttpResponse
from service.providers.http_provider import HttpProvider

DEPLOYMENT = Deployment(
    alias="claude",
    provider="claude",
    provider_type="anthropic",
    upstream_model="claude-sonnet-4-5",
    capabilities=Capabilities(vision=True),
)
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def dialect(default_max_tokens: int = 4096) -> AnthropicDialect:
    return AnthropicDialect("claude", default_max_tokens)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def text(role: content_pb2.Role.ValueType, *texts: str) -> content_pb2.Message:
    return content_pb2.Message(role=role, parts=[content_pb2.Part(text=t) for t in texts])


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = content_pb2.Tool(
    name="get_weather", description="Current weather", parameters=struct(WEATHER_SCHEMA)
)


def body_of(request: chat_pb2.ChatRequest, stream: bool = False) -> Any:
    spec = dialect().chat_request(request, DEPLOYMENT, stream=stream)
    assert spec.method == "POST"
    assert spec.url == "messages"
    assert dict(spec.headers) == {}  # auth and version ride on the client
    # The body goes out as JSON: it must survive a round trip unchanged.
    assert json.loads(json.dumps(spec.json_body)) == spec.json_body
    return spec.json_body


def violation_of(error: GatewayError) -> tuple[grpc.StatusCode, str, list[str]]:
    return error.code, error.reason, [v.field for v in error.field_violations]


# Requests ------------------------------------------------------------------


def test_request_matches_the_reference_example() -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            text(content_pb2.ROLE_SYSTEM, "Be brief."),
            content_pb2.Message(
                role=content_pb2.ROLE_USER,
                parts=[
                    content_pb2.Part(
                        image=content_pb2.Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
                    ),
                    content_pb2.Part(text="Weather in Paris?"),
                ],
            ),
        ],
        generation_config=chat_pb2.GenerationConfig(
            max_output_tokens=512, temperature=0.3, stop_sequences=["END"]
        ),
        tools=[WEATHER],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO),
    )
    expected = json.loads(
        """{"model":"claude-sonnet-4-5","max_tokens":512,"system":"Be brief.","temperature":0.3,"stop_sequences":["END"],
 "messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"Weather in Paris?"}]}],
 "tools":[{"name":"get_weather","description":"Current weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],
 "tool_choice":{"type":"auto"}}"""
    )
    assert body_of(request) == expected


def test_request_with_tool_turns_reasoning_images_and_every_setting() -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            text(content_pb2.ROLE_SYSTEM, "Be brief."),
            text(content_pb2.ROLE_USER, "Weather in Paris and Rome?"),
            text(content_pb2.ROLE_SYSTEM, "Use metric units."),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[
                    content_pb2.Part(
                        reasoning=content_pb2.Reasoning(text="Two cities.", signature="EqSig==")
                    ),
                    content_pb2.Part(reasoning=content_pb2.Reasoning(text="unsigned, elsewhere")),
                    content_pb2.Part(text="Checking both."),
                    content_pb2.Part(text=""),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(
                            id="toolu_01A", name="get_weather", arguments='{"city": "Paris"}'
                        )
                    ),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(id="toolu_01B", name="now", arguments="")
                    ),
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(
                            tool_call_id="toolu_01A", content='{"temp_c": 21}'
                        )
                    )
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(
                            tool_call_id="toolu_01B", content="clock broken", is_error=True
                        )
                    )
                ],
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_USER,
                parts=[
                    content_pb2.Part(text="And these?"),
                    content_pb2.Part(image=content_pb2.Image(url="https://example.com/a.jpg")),
                    content_pb2.Part(
                        image=content_pb2.Image(url="data:image/webp;base64,UklGRg==")
                    ),
                ],
            ),
        ],
        generation_config=chat_pb2.GenerationConfig(
            max_output_tokens=2048,
            top_p=0.9,
            top_k=40,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            reasoning_budget_tokens=1024,
            response_format=chat_pb2.ResponseFormat(
                type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                schema_name="answer",
                json_schema=struct({"type": "object", "properties": {"a": {"type": "string"}}}),
                strict=True,
            ),
        ),
        tools=[WEATHER, content_pb2.Tool(name="now")],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED),
        labels={"team": "a"},
    )
    assert body_of(request, stream=True) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2048,
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two cities.", "signature": "EqSig=="},
                    {"type": "text", "text": "Checking both."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A",
                        "content": '{"temp_c": 21}',
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01B",
                        "content": "clock broken",
                        "is_error": True,
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And these?"},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/webp",
                            "data": "UklGRg==",
                        },
                    },
                ],
            },
        ],
        "top_p": 0.9,
        "top_k": 40,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": WEATHER_SCHEMA,
            },
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "output_config": {
            "format": {
                "type": "json_schema",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            }
        },
        "stream": True,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_NONE), {"type": "none"}),
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO), {"type": "auto"}),
        (content_pb2.ToolChoice(tool_name="get_weather"), {"type": "tool", "name": "get_weather"}),
        (content_pb2.ToolChoice(), None),
    ],
)
def test_tool_choice(choice: content_pb2.ToolChoice, expected: dict[str, str] | None) -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[text(content_pb2.ROLE_USER, "hi")],
        tools=[WEATHER],
        tool_choice=choice,
    )
    assert body_of(request).get("tool_choice") == expected


def test_json_object_mode_is_refused_and_plain_text_has_no_format() -> None:
    # Anthropic's structured outputs need `additionalProperties: false` on objects: the
    # schema {"type": "object"} is refused or forces `{}`, so there is no JSON-object mode.
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[text(content_pb2.ROLE_USER, "hi")],
        generation_config=chat_pb2.GenerationConfig(
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        ),
    )
    with pytest.raises(GatewayError) as caught:
        dialect(default_max_tokens=1000).chat_request(request, DEPLOYMENT, stream=False)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "CAPABILITY_UNSUPPORTED"
    assert [v.field for v in caught.value.field_violations] == [
        "generation_config.response_format.type"
    ]
    plain = chat_pb2.ChatRequest(model="claude", messages=[text(content_pb2.ROLE_USER, "hi")])
    assert body_of(plain) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def _assistant_call(arguments: str) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="claude",
        messages=[
            text(content_pb2.ROLE_USER, "hi"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT,
                parts=[
                    content_pb2.Part(text="calling"),
                    content_pb2.Part(
                        tool_call=content_pb2.ToolCall(id="t1", name="f", arguments=arguments)
                    ),
                ],
            ),
        ],
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_assistant_call('{"city": "Par'), "messages[1].parts[1].tool_call.arguments"),
        (_assistant_call('["a list"]'), "messages[1].parts[1].tool_call.arguments"),
        (
            chat_pb2.ChatRequest(
                model="claude",
                messages=[
                    content_pb2.Message(
                        role=content_pb2.ROLE_USER,
                        parts=[
                            content_pb2.Part(text="look"),
                            content_pb2.Part(
                                image=content_pb2.Image(url="data:image/png,rawbytes")
                            ),
                        ],
                    )
                ],
            ),
            "messages[0].parts[1].image.url",
        ),
        (
            chat_pb2.ChatRequest(
                model="claude",
                messages=[
                    content_pb2.Message(
                        role=content_pb2.ROLE_USER,
                        parts=[
                            content_pb2.Part(
                                image=content_pb2.Image(url="data:image/png;base64,@@@")
                            )
                        ],
                    )
                ],
            ),
            "messages[0].parts[0].image.url",
        ),
        (
            chat_pb2.ChatRequest(
                model="claude",
                messages=[
                    content_pb2.Message(
                        role=content_pb2.ROLE_USER,
                        parts=[
                            content_pb2.Part(text="look"),
                            content_pb2.Part(
                                image=content_pb2.Image(url="data:image/bmp;base64,Qk0=")
                            ),
                        ],
                    )
                ],
            ),
            "messages[0].parts[1].image.url",
        ),
        (
            chat_pb2.ChatRequest(
                model="claude",
                messages=[text(content_pb2.ROLE_USER, "hi")],
                generation_config=chat_pb2.GenerationConfig(temperature=1.5),
            ),
            "generation_config.temperature",
        ),
        (
            chat_pb2.ChatRequest(
                model="claude",
                messages=[text(content_pb2.ROLE_USER, "hi")],
                generation_config=chat_pb2.GenerationConfig(
                    max_output_tokens=1000, reasoning_budget_tokens=1000
                ),
            ),
            "generation_config.reasoning_budget_tokens",
        ),
    ],
)
def test_requests_anthropic_cannot_carry_are_invalid_arguments(
    request_: chat_pb2.ChatRequest, field: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        dialect().chat_request(request_, DEPLOYMENT, stream=False)
    assert violation_of(caught.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        [field],
    )


# Responses -----------------------------------------------------------------


def response(body: str, headers: dict[str, str] | None = None, status: int = 200) -> HttpResponse:
    return HttpResponse(status, headers or {}, body.encode())


def test_response_matches_the_reference_example() -> None:
    wire = """{"id":"msg_01Ab","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
 "content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_01X","name":"get_weather","input":{"city":"Paris"}}],
 "stop_reason":"tool_use","stop_sequence":null,
 "usage":{"input_tokens":412,"output_tokens":61,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"""
    parsed = dialect().parse_chat(response(wire), DEPLOYMENT)
    assert parsed == chat_pb2.ChatResponse(
        message=content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT,
            parts=[
                content_pb2.Part(text="Let me check."),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(
                        id="toolu_01X", name="get_weather", arguments='{"city":"Paris"}'
                    )
                ),
            ],
        ),
        finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS,
        raw_finish_reason="tool_use",
        usage=route_pb2.Usage(input_tokens=412, output_tokens=61, total_tokens=473),
        # The body's message id names the request when no header does.
        route=route_pb2.RouteInfo(upstream_request_id="msg_01Ab"),
    )


def test_response_with_thinking_cache_and_reasoning_usage() -> None:
    wire = """{"id":"msg_02","type":"message","role":"assistant","model":"claude-sonnet-4-5",
 "content":[{"type":"thinking","thinking":"Paris is in France.","signature":"EqQBCgIYAhIM"},
            {"type":"redacted_thinking","data":"EmwKAhgBEgy"},
            {"type":"text","text":"Sunny, ","citations":null},{"type":"text","text":"21 °C ☀️"}],
 "stop_reason":"end_turn","stop_sequence":null,
 "usage":{"input_tokens":1,"cache_creation_input_tokens":200,"cache_read_input_tokens":30433,
          "output_tokens":90,"output_tokens_details":{"thinking_tokens":70},
          "service_tier":"standard","server_tool_use":null}}"""
    parsed = dialect().parse_chat(response(wire), DEPLOYMENT)
    assert list(parsed.message.parts) == [
        content_pb2.Part(
            reasoning=content_pb2.Reasoning(text="Paris is in France.", signature="EqQBCgIYAhIM")
        ),
        content_pb2.Part(reasoning=content_pb2.Reasoning(redacted="EmwKAhgBEgy")),
        content_pb2.Part(text="Sunny, "),
        content_pb2.Part(text="21 °C ☀️"),
    ]
    assert parsed.usage == route_pb2.Usage(
        input_tokens=30634,
        output_tokens=90,
        total_tokens=30724,
        cached_input_tokens=30433,
        cache_write_input_tokens=200,
        reasoning_tokens=70,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", chat_pb2.FINISH_REASON_STOP),
        ("stop_sequence", chat_pb2.FINISH_REASON_STOP),
        ("pause_turn", chat_pb2.FINISH_REASON_STOP),
        ("max_tokens", chat_pb2.FINISH_REASON_LENGTH),
        ("model_context_window_exceeded", chat_pb2.FINISH_REASON_LENGTH),
        ("tool_use", chat_pb2.FINISH_REASON_TOOL_CALLS),
        ("refusal", chat_pb2.FINISH_REASON_REFUSAL),
        ("a_reason_from_the_future", chat_pb2.FINISH_REASON_OTHER),
    ],
)
def test_stop_reasons(raw: str, expected: chat_pb2.FinishReason.ValueType) -> None:
    wire = json.dumps(
        {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "x",
            "content": [],
            "stop_reason": raw,
            "stop_sequence": "END" if raw == "stop_sequence" else None,
            "usage": {"input_tokens": 3, "output_tokens": 0},
        }
    )
    parsed = dialect().parse_chat(response(wire), DEPLOYMENT)
    assert (parsed.finish_reason, parsed.raw_finish_reason) == (expected, raw)
    assert parsed.usage.total_tokens == 3


@pytest.mark.parametrize(
    "wire",
    [
        '{"content":[],"stop_reason":null,"usage":{}}',
        '{"content":[{"type":"text"}],"stop_reason":"end_turn"}',
        '{"stop_reason":"end_turn"}',
        '{"content":[],"stop_reason":"end',
    ],
)
def test_malformed_responses_raise_for_the_transport(wire: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        dialect().parse_chat(response(wire), DEPLOYMENT)


# Streams -------------------------------------------------------------------

REFERENCE_STREAM = """event: message_start
data: {"type":"message_start","message":{"id":"msg_01Ab","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01X","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Par"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}

event: message_stop
data: {"type":"message_stop"}

"""


def run_stream(wire: str, finish: bool = True) -> list[chat_pb2.StreamChatResponse]:
    """Decodes and parses a stream as the transport does (empty chunks dropped)."""
    parser = dialect().stream_parser(DEPLOYMENT)
    decoder = SseDecoder()
    chunks: list[chat_pb2.StreamChatResponse] = []
    for event in [*decoder.feed(wire.encode()), *decoder.close()]:
        chunks.extend(parser.feed(event))
    if finish:
        chunks.extend(parser.finish())
    return [c for c in chunks if c.ByteSize()]


def tool_delta(index: int, arguments: str = "", id_: str = "", name: str = "") -> Any:
    return chat_pb2.StreamChatResponse(
        tool_call_deltas=[
            chat_pb2.ToolCallDelta(index=index, id=id_, name=name, arguments_delta=arguments)
        ]
    )


def test_stream_matches_the_reference_example() -> None:
    assert run_stream(REFERENCE_STREAM) == [
        chat_pb2.StreamChatResponse(text_delta="Checking"),
        tool_delta(0, id_="toolu_01X", name="get_weather"),
        tool_delta(0, '{"city": "Par'),
        tool_delta(0, 'is"}'),
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS, raw_finish_reason="tool_use"
        ),
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=25, output_tokens=42, total_tokens=67)
        ),
    ]


def sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def start(usage: dict[str, Any]) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return {"type": "message_start", "message": message}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(reason: str | None, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": usage,
    }


MESSAGE_STOP = {"type": "message_stop"}


def test_stream_thinking_two_tool_calls_and_cumulative_usage() -> None:
    wire = sse(
        start(
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
                "output_tokens": 1,
            }
        ),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, type="thinking_delta", thinking="Two "),
        delta(0, type="thinking_delta", thinking="cities."),
        delta(0, type="signature_delta", signature="EqSig=="),
        stop(0),
        block_start(1, {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}),
        delta(1, type="input_json_delta", partial_json=""),
        delta(1, type="input_json_delta", partial_json='{"city":"Par'),
        delta(1, type="input_json_delta", partial_json='is"}'),
        stop(1),
        block_start(2, {"type": "text", "text": ""}),
        delta(2, type="text_delta", text="and "),
        stop(2),
        block_start(3, {"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}}),
        delta(3, type="input_json_delta", partial_json=""),
        stop(3),
        message_delta(None, {"output_tokens": 20}),
        message_delta(
            "tool_use",
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
                "output_tokens": 55,
                "output_tokens_details": {"thinking_tokens": 30},
            },
        ),
        MESSAGE_STOP,
    )
    assert run_stream(wire) == [
        chat_pb2.StreamChatResponse(reasoning_delta="Two "),
        chat_pb2.StreamChatResponse(reasoning_delta="cities."),
        chat_pb2.StreamChatResponse(reasoning_signature="EqSig=="),
        tool_delta(0, id_="toolu_A", name="get_weather"),
        tool_delta(0, '{"city":"Par'),
        tool_delta(0, 'is"}'),
        chat_pb2.StreamChatResponse(text_delta="and "),
        tool_delta(1, id_="toolu_B", name="now"),
        tool_delta(1, "{}"),  # no arguments streamed: "{}" as the whole response says
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS, raw_finish_reason="tool_use"
        ),
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(
                input_tokens=115,
                output_tokens=55,
                total_tokens=170,
                cached_input_tokens=100,
                cache_write_input_tokens=5,
                reasoning_tokens=30,
            )
        ),
    ]


def test_stream_ignores_pings_unknown_events_and_what_follows_message_stop() -> None:
    parser = dialect().stream_parser(DEPLOYMENT)
    events = [
        SseEvent("ping", '{"type": "ping"}'),
        SseEvent("message_start", json.dumps(start({"input_tokens": 4, "output_tokens": 1}))),
        SseEvent("message_annotation", '{"type":"message_annotation","x":{"y":1}}'),
        SseEvent("content_block_start", json.dumps(block_start(0, {"type": "text", "text": ""}))),
        SseEvent("", json.dumps(delta(0, type="text_delta", text="hi"))),  # no event: line
        SseEvent("content_block_delta", json.dumps(delta(0, type="citations_delta", citation={}))),
        SseEvent(
            "content_block_start",
            json.dumps(block_start(1, {"type": "redacted_thinking", "data": "Em=="})),
        ),
        SseEvent("content_block_stop", json.dumps(stop(0))),
        SseEvent("message_delta", json.dumps(message_delta("end_turn", {"output_tokens": 2}))),
        SseEvent("message_delta", json.dumps(message_delta("end_turn", {"output_tokens": 3}))),
        SseEvent("message_stop", '{"type":"message_stop"}'),
    ]
    chunks = [c for event in events for c in parser.feed(event)]
    assert parser.terminated and parser.finished
    assert parser.feed(SseEvent("content_block_delta", "not even json")) == []
    assert [c for c in chunks if c.ByteSize()] == [
        chat_pb2.StreamChatResponse(text_delta="hi"),
        chat_pb2.StreamChatResponse(reasoning_redacted="Em=="),
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_STOP, raw_finish_reason="end_turn"
        ),
    ]
    # The later message_delta updates usage without a second finish reason.
    assert parser.finish() == [
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=4, output_tokens=3, total_tokens=7)
        )
    ]


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (
            REFERENCE_STREAM.replace('event: message_stop\ndata: {"type":"message_stop"}\n\n', ""),
            "no message_stop",
        ),
        (REFERENCE_STREAM.split("event: message_delta")[0], "cut after the content"),
    ],
)
def test_stream_that_ends_early_is_truncated(wire: str, what: str) -> None:
    with pytest.raises(GatewayError) as caught:
        run_stream(wire)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_STREAM_TRUNCATED",
    ), what


@pytest.mark.parametrize(
    ("wire", "what"),
    [
        (
            sse(start({"input_tokens": 1, "output_tokens": 1}), MESSAGE_STOP),
            "message_stop without a stop reason",
        ),
        ("", "empty body"),
    ],
)
def test_stream_that_ends_before_any_output_is_empty(wire: str, what: str) -> None:
    with pytest.raises(GatewayError) as caught:
        run_stream(wire)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_EMPTY_STREAM",
    ), what
    assert not caught.value.upstream_fault, what


@pytest.mark.parametrize(
    ("error_type", "code", "reason"),
    [
        ("overloaded_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED"),
        ("api_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL"),
        ("rate_limit_error", grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
        ("invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
        ("brand_new_error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL"),
    ],
)
def test_error_event_in_the_stream(error_type: str, code: grpc.StatusCode, reason: str) -> None:
    parser = dialect().stream_parser(DEPLOYMENT)
    head = REFERENCE_STREAM.split("event: content_block_stop")[0]
    decoder = SseDecoder()
    chunks = [c for event in decoder.feed(head.encode()) for c in parser.feed(event)]
    assert [c.text_delta for c in chunks if c.text_delta] == ["Checking"]
    error = SseEvent(
        "error",
        json.dumps(
            {
                "type": "error",
                "error": {"type": error_type, "message": "Overloaded", "details": None},
                "request_id": "req_011CStream",
            }
        ),
    )
    with pytest.raises(GatewayError) as caught:
        parser.feed(error)
    assert (caught.value.code, caught.value.reason) == (code, reason)
    assert caught.value.metadata["upstreamType"] == error_type
    assert caught.value.metadata["upstreamRequestId"] == "req_011CStream"
    assert caught.value.metadata["model"] == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    "event",
    [
        SseEvent(
            "content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_d'
        ),
        SseEvent(
            "content_block_delta", '{"type":"content_block_delta","delta":{"type":"text_delta"}}'
        ),
        SseEvent("message_start", '{"type":"message_start"}'),
        SseEvent("message_delta", '["not", "an", "object"]'),
    ],
)
def test_malformed_stream_events_raise_for_the_transport(event: SseEvent) -> None:
    parser = dialect().stream_parser(DEPLOYMENT)
    with pytest.raises((ValueError, KeyError, TypeError)):
        parser.feed(event)


# Errors --------------------------------------------------------------------


def envelope(error_type: str, message: str, request_id: str = "req_011CBody") -> str:
    return json.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


ERROR_CASES: list[tuple[int, dict[str, str], str, grpc.StatusCode, str, float | None]] = [
    (
        400,
        {},
        envelope("invalid_request_error", "max_tokens: Field required"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
        None,
    ),
    (
        400,
        {},
        envelope("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        None,
    ),
    (
        400,
        {},
        envelope(
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        None,
    ),
    (
        400,
        {},
        envelope(
            "invalid_request_error",
            "You have reached your specified API usage limits. You will regain access on 2026-02-01 at 00:00 UTC.",
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    (
        400,
        {},
        envelope(
            "invalid_request_error", "Your credit balance is too low to access the Anthropic API."
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    (
        401,
        {},
        envelope("authentication_error", "invalid x-api-key"),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
        None,
    ),
    (
        402,
        {"retry-after": "60"},
        envelope("billing_error", "Payment required"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    (
        403,
        {},
        envelope("permission_error", "Not allowed"),
        grpc.StatusCode.PERMISSION_DENIED,
        "UPSTREAM_PERMISSION_DENIED",
        None,
    ),
    (
        404,
        {},
        envelope("not_found_error", "model: claude-nope"),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        None,
    ),
    (
        409,
        {},
        envelope("conflict_error", "Conflict"),
        grpc.StatusCode.ABORTED,
        "UPSTREAM_CONFLICT",
        None,
    ),
    (
        413,
        {},
        "<html><head><title>413 Request Entity Too Large</title></head><body>cloudflare</body></html>",
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
        None,
    ),
    (
        429,
        {"retry-after": "3"},
        envelope(
            "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        3.0,
    ),
    (
        429,
        {"retry-after-ms": "1500", "retry-after": "9"},
        envelope("rate_limit_error", "slow down"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        1.5,
    ),
    (
        429,
        {"retry-after": "Thu, 01 Jan 2026 00:00:12 GMT"},
        envelope("rate_limit_error", "slow down"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        12.0,
    ),
    (
        429,
        {
            "anthropic-ratelimit-requests-remaining": "4",
            "anthropic-ratelimit-requests-reset": "2026-01-01T00:05:00Z",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:20Z",
        },
        envelope("rate_limit_error", "slow down"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        20.0,
    ),
    (
        429,
        {"retry-after": "30"},
        envelope(
            "rate_limit_error", "This request would exceed your account's monthly spend limit."
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
    ),
    (
        500,
        {},
        envelope("api_error", "Internal server error"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_INTERNAL",
        None,
    ),
    (
        502,
        {},
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_BAD_GATEWAY",
        None,
    ),
    (503, {}, "", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", None),
    (
        504,
        {},
        envelope("timeout_error", "Request timed out"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
        None,
    ),
    (
        529,
        {"retry-after": "2"},
        envelope("overloaded_error", "Overloaded"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_OVERLOADED",
        2.0,
    ),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "code", "reason", "retry_after"), ERROR_CASES
)
def test_error_responses(
    status: int,
    headers: dict[str, str],
    body: str,
    code: grpc.StatusCode,
    reason: str,
    retry_after: float | None,
) -> None:
    error = dialect().parse_error(response(body, headers, status), DEPLOYMENT, NOW)
    assert (error.code, error.reason, error.retry_after) == (code, reason, retry_after)
    assert error.metadata["upstreamStatus"] == str(status)
    assert error.metadata["provider"] == "claude"
    assert error.metadata["model"] == "claude-sonnet-4-5"
    if body.startswith("{"):
        assert error.metadata["upstreamType"] == json.loads(body)["error"]["type"]
        assert error.metadata["upstreamRequestId"] == "req_011CBody"
    else:
        assert "upstreamType" not in error.metadata
    assert "usage limits" not in error.message and "<html>" not in error.message


def test_error_metadata_prefers_the_request_id_header_and_reads_details() -> None:
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "limit",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
            "request_id": "req_body",
        }
    )
    error = dialect().parse_error(
        response(body, {"request-id": "req_header", "retry-after": "5"}, 429), DEPLOYMENT, NOW
    )
    assert (error.reason, error.retry_after, error.retryable) == (
        "UPSTREAM_QUOTA_EXHAUSTED",
        None,
        False,
    )
    assert error.metadata["upstreamRequestId"] == "req_header"
    assert error.metadata["upstreamCode"] == "enforced_spend_limit_reached"


def test_x_should_retry_overrides_the_table() -> None:
    overloaded = dialect().parse_error(
        response(
            envelope("overloaded_error", "Overloaded"),
            {"x-should-retry": "false", "retry-after": "2"},
            529,
        ),
        DEPLOYMENT,
        NOW,
    )
    assert (overloaded.code, overloaded.retryable, overloaded.retry_after) == (
        grpc.StatusCode.UNAVAILABLE,
        False,
        None,
    )
    bad_request = dialect().parse_error(
        response(envelope("invalid_request_error", "try again"), {"x-should-retry": "true"}, 400),
        DEPLOYMENT,
        NOW,
    )
    assert (bad_request.code, bad_request.retryable) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    plain = dialect().parse_error(
        response(envelope("invalid_request_error", "bad"), {}, 400), DEPLOYMENT, NOW
    )
    assert plain.retryable is False


# Factory -------------------------------------------------------------------


async def test_factory_builds_the_provider_with_its_headers() -> None:
    assert registry.factory_for("anthropic") is create_anthropic
    config = config_pb2.ProviderConfig(
        name="claude",
        api_key_env="ANTHROPIC_TEST_KEY",
        anthropic=config_pb2.AnthropicProviderConfig(
            version="2024-01-01", betas=["a-2025-01-01", "b-2025-02-02"], default_max_tokens=1000
        ),
        headers={"x-extra": "1"},
    )
    provider = create_anthropic(config, {"ANTHROPIC_TEST_KEY": "sk-ant-secret"})
    try:
        assert isinstance(provider, HttpProvider)
        assert provider.kind == "anthropic"
        assert provider.default_capabilities == Capabilities(
            streaming=True,
            tools=True,
            vision=True,
            json_output=True,
            embeddings=False,
            documents=True,
        )
        assert provider.client.settings.base_url == "https://api.anthropic.com/v1/"
        assert dict(provider.client.settings.headers) == {
            "x-extra": "1",
            "x-api-key": "sk-ant-secret",
            "anthropic-version": "2024-01-01",
            "anthropic-beta": "a-2025-01-01,b-2025-02-02",
        }
        dialect_ = provider.dialect
        assert isinstance(dialect_, AnthropicDialect)
        assert dialect_.default_max_tokens == 1000
        assert dialect_.request_id_header == "request-id"
        assert dialect_.framing == "sse"
    finally:
        await provider.aclose()

    plain = create_anthropic(
        config_pb2.ProviderConfig(
            name="c2",
            api_key_env="K",
            base_url="http://127.0.0.1:9/v1/",
            anthropic=config_pb2.AnthropicProviderConfig(),
        ),
        {"K": "k"},
    )
    try:
        assert isinstance(plain, HttpProvider)
        assert plain.client.settings.base_url == "http://127.0.0.1:9/v1/"
        assert dict(plain.client.settings.headers) == {
            "x-api-key": "k",
            "anthropic-version": "2023-06-01",
        }
        assert isinstance(plain.dialect, AnthropicDialect)
        assert plain.dialect.default_max_tokens == 4096
    finally:
        await plain.aclose()


def test_stream_parser_keeps_the_message_id_for_the_route() -> None:
    parser = AnthropicStreamParser("anthropic", "claude-sonnet-4-5")
    start = {"type": "message_start", "message": {"id": "msg_01S", "usage": {"input_tokens": 3}}}
    parser.feed(SseEvent(event="message_start", data=json.dumps(start)))
    assert parser.response_id == "msg_01S"
