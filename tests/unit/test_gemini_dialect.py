"""Golden tests of the Gemini dialect's pure transforms, on wire data written out as the
Gemini API sends it (reference §5)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.errors import GatewayError
from service.providers.base import EMBEDDINGS_ONLY, Deployment
from service.providers.framing import SseDecoder, SseEvent
from service.providers.gemini import GeminiDialect, create_gemini
from service.providers.http import HttpResponse
from service.providers.http_provider import HttpProvider
from service.providers.registry import factory_for

DIALECT = GeminiDialect("gemini")
CHAT = Deployment(
    "gemini", "gemini", "gemini", "gemini-2.5-flash", GeminiDialect.default_capabilities
)
EMBED = Deployment("gemini-embed", "gemini", "gemini", "text-embedding-004", EMBEDDINGS_ONLY)
NOW = 1_767_225_600.0


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def msg(role: int, *parts: content_pb2.Part) -> content_pb2.Message:
    return content_pb2.Message(role=role, parts=list(parts))  # type: ignore[arg-type]


def text(value: str) -> content_pb2.Part:
    return content_pb2.Part(text=value)


def response(body: str | bytes, status: int = 200, **headers: str) -> HttpResponse:
    data = body.encode() if isinstance(body, str) else body
    return HttpResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, data)


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "maximum": 7}},
    "required": ["city"],
}


# --- request ----------------------------------------------------------------------------


def test_chat_request_golden() -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            msg(content_pb2.ROLE_SYSTEM, text("Be brief.")),
            msg(
                content_pb2.ROLE_USER,
                text("Weather in Paris?"),
                content_pb2.Part(image=content_pb2.Image(data=b"\x89PNG", mime_type="image/png")),
                content_pb2.Part(
                    image=content_pb2.Image(url="https://example.com/a.jpg", mime_type="image/jpeg")
                ),
                content_pb2.Part(image=content_pb2.Image(url="data:image/webp;base64,UklGRg==")),
            ),
            msg(
                content_pb2.ROLE_ASSISTANT,
                content_pb2.Part(reasoning=content_pb2.Reasoning(text="Plan.", signature="c2ln")),
                text("Checking."),
                content_pb2.Part(reasoning=content_pb2.Reasoning(signature="c2lnMg==")),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(
                        id="call_r1_0", name="get_weather", arguments='{"city": "Paris"}'
                    )
                ),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(id="call_r1_1", name="get_time", arguments="")
                ),
            ),
            msg(
                content_pb2.ROLE_TOOL,
                content_pb2.Part(
                    tool_result=content_pb2.ToolResult(
                        tool_call_id="call_r1_0", content='{"c": 21}'
                    )
                ),
            ),
            msg(
                content_pb2.ROLE_TOOL,
                content_pb2.Part(
                    tool_result=content_pb2.ToolResult(
                        tool_call_id="call_r1_1", name="get_time", content="12:00"
                    )
                ),
                content_pb2.Part(
                    tool_result=content_pb2.ToolResult(
                        tool_call_id="call_r1_1", content="clock broken", is_error=True
                    )
                ),
            ),
            msg(content_pb2.ROLE_USER, text("Thanks")),
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            max_output_tokens=256,
            seed=7,
            stop_sequences=["END"],
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            reasoning_budget_tokens=1024,
            response_format=chat_pb2.ResponseFormat(
                type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                schema_name="answer",
                json_schema=struct({"type": "object", "properties": {"n": {"type": "integer"}}}),
            ),
        ),
        tools=[
            content_pb2.Tool(
                name="get_weather", description="Weather by city", parameters=struct(WEATHER)
            ),
            content_pb2.Tool(name="get_time"),
        ],
        tool_choice=content_pb2.ToolChoice(tool_name="get_weather"),
    )
    spec = DIALECT.chat_request(request, CHAT, stream=False)
    assert (spec.method, spec.url, dict(spec.headers)) == (
        "POST",
        "models/gemini-2.5-flash:generateContent",
        {},
    )
    assert spec.json_body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Weather in Paris?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
                    {
                        "fileData": {
                            "mimeType": "image/jpeg",
                            "fileUri": "https://example.com/a.jpg",
                        }
                    },
                    {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Plan.", "thought": True, "thoughtSignature": "c2ln"},
                    {"text": "Checking."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2lnMg==",
                    },
                    {"functionCall": {"name": "get_time", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"c": 21}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
                    {
                        "functionResponse": {
                            "name": "get_time",
                            "response": {"error": "clock broken"},
                        }
                    },
                ],
            },
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ],
        "generationConfig": {
            "temperature": 0.3,
            "topP": 0.9,
            "topK": 40,
            "maxOutputTokens": 256,
            "stopSequences": ["END"],
            "seed": 7,
            "presencePenalty": 0.5,
            "frequencyPenalty": -0.5,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather by city",
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "city": {"type": "string"},
                                "days": {"type": "integer", "maximum": 7},
                            },
                            "required": ["city"],
                        },
                    },
                    {"name": "get_time"},
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
        },
    }
    # The body is plain JSON (what httpx sends).
    assert json.loads(json.dumps(spec.json_body)) == spec.json_body


def test_minimal_stream_request_and_model_paths() -> None:
    request = chat_pb2.ChatRequest(
        model="gemini", messages=[msg(content_pb2.ROLE_USER, text("Hi"))]
    )
    spec = DIALECT.chat_request(request, CHAT, stream=True)
    assert spec.url == "models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert spec.json_body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    tuned = Deployment("t", "gemini", "gemini", "tunedModels/my-model", CHAT.capabilities)
    assert DIALECT.chat_request(request, tuned, False).url == "tunedModels/my-model:generateContent"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO), {"mode": "AUTO"}),
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_NONE), {"mode": "NONE"}),
        (content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED), {"mode": "ANY"}),
        (
            content_pb2.ToolChoice(tool_name="f"),
            {"mode": "ANY", "allowedFunctionNames": ["f"]},
        ),
        (None, None),
    ],
)
def test_tool_choice_modes(choice: content_pb2.ToolChoice | None, expected: Any) -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[msg(content_pb2.ROLE_USER, text("Hi"))],
        tools=[content_pb2.Tool(name="f")],
    )
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    body = DIALECT.chat_request(request, CHAT, False).json_body
    assert body["tools"] == [{"functionDeclarations": [{"name": "f"}]}]
    assert body.get("toolConfig") == (
        None if expected is None else {"functionCallingConfig": expected}
    )


def test_json_object_format_and_text_format() -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[msg(content_pb2.ROLE_USER, text("Hi"))],
        generation_config=chat_pb2.GenerationConfig(
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
        ),
    )
    body = DIALECT.chat_request(request, CHAT, False).json_body
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    request.generation_config.response_format.type = chat_pb2.RESPONSE_FORMAT_TYPE_TEXT
    assert "generationConfig" not in DIALECT.chat_request(request, CHAT, False).json_body


def test_requests_gemini_cannot_carry_are_refused_field_by_field() -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            msg(
                content_pb2.ROLE_USER,
                text("look"),
                content_pb2.Part(image=content_pb2.Image(url="https://example.com/x.png")),
                content_pb2.Part(image=content_pb2.Image(url="data:image/png,notbase64")),
            ),
            msg(
                content_pb2.ROLE_ASSISTANT,
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(id="c1", name="f", arguments="{not json")
                ),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(id="c2", name="f", arguments="[1]")
                ),
            ),
            msg(
                content_pb2.ROLE_TOOL,
                content_pb2.Part(
                    tool_result=content_pb2.ToolResult(tool_call_id="unknown", content="x")
                ),
            ),
        ],
    )
    with pytest.raises(GatewayError) as caught:
        DIALECT.chat_request(request, CHAT, False)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert [v.field for v in error.field_violations] == [
        "messages[0].parts[1].image.mime_type",
        "messages[0].parts[2].image.url",
        "messages[1].parts[0].tool_call.arguments",
        "messages[1].parts[1].tool_call.arguments",
        "messages[2].parts[0].tool_result.name",
    ]


# --- response ---------------------------------------------------------------------------


def test_parse_chat_reference_example_with_tool_call() -> None:
    body = """{"candidates":[{"content":{"role":"model","parts":[{"text":"Calling the tool."},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},
   "finishReason":"STOP","index":0}],
 "usageMetadata":{"promptTokenCount":31,"candidatesTokenCount":12,"totalTokenCount":43,"thoughtsTokenCount":0,"cachedContentTokenCount":0,
   "promptTokensDetails":[{"modality":"TEXT","tokenCount":31}]},
 "modelVersion":"gemini-2.5-flash","responseId":"r-abc"}"""
    result = DIALECT.parse_chat(response(body), CHAT)
    assert result == chat_pb2.ChatResponse(
        message=content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT,
            parts=[
                text("Calling the tool."),
                content_pb2.Part(
                    tool_call=content_pb2.ToolCall(
                        id="call_r-abc_0", name="get_weather", arguments='{"city":"Paris"}'
                    )
                ),
            ],
        ),
        finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS,
        raw_finish_reason="STOP",
        usage=route_pb2.Usage(input_tokens=31, output_tokens=12, total_tokens=43),
        route=route_pb2.RouteInfo(upstream_request_id="r-abc"),
    )


def test_parse_chat_thoughts_signatures_and_full_usage() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Let me think.", "thought": True},
                        {"text": "Hel"},
                        {"text": "lo"},
                        {"text": "!", "thoughtSignature": "c2ln"},
                        {"functionCall": {"id": "fc-9", "name": "f", "args": {"é": [1, 2.5]}}},
                        {"functionCall": {"name": "g"}},
                    ],
                },
                "finishReason": "MAX_TOKENS",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 60,
            "toolUsePromptTokenCount": 5,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "totalTokenCount": 155,
        },
    }
    result = DIALECT.parse_chat(response(json.dumps(body), x_request_id="req-from-header"), CHAT)
    g_id = result.message.parts[5].tool_call.id
    assert g_id.startswith("call_") and len(g_id) == len("call_") + 16
    assert list(result.message.parts) == [
        content_pb2.Part(reasoning=content_pb2.Reasoning(text="Let me think.")),
        text("Hello"),
        content_pb2.Part(reasoning=content_pb2.Reasoning(signature="c2ln")),
        text("!"),
        content_pb2.Part(
            tool_call=content_pb2.ToolCall(id="fc-9", name="f", arguments='{"é":[1,2.5]}')
        ),
        content_pb2.Part(tool_call=content_pb2.ToolCall(id=g_id, name="g", arguments="{}")),
    ]
    # MAX_TOKENS stays LENGTH even with calls.
    assert (result.finish_reason, result.raw_finish_reason) == (
        chat_pb2.FINISH_REASON_LENGTH,
        "MAX_TOKENS",
    )
    # input = prompt (cached included) + tool-use prompt; output = candidates + thoughts.
    assert result.usage == route_pb2.Usage(
        input_tokens=105,
        cached_input_tokens=60,
        output_tokens=50,
        reasoning_tokens=30,
        total_tokens=155,
    )
    assert result.route.upstream_request_id == "req-from-header"
    # The same response parsed twice names its calls the same way.
    again = DIALECT.parse_chat(response(json.dumps(body)), CHAT)
    assert again.message.parts[5].tool_call.id == g_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", chat_pb2.FINISH_REASON_STOP),
        ("MAX_TOKENS", chat_pb2.FINISH_REASON_LENGTH),
        ("SAFETY", chat_pb2.FINISH_REASON_CONTENT_FILTER),
        ("RECITATION", chat_pb2.FINISH_REASON_CONTENT_FILTER),
        ("PROHIBITED_CONTENT", chat_pb2.FINISH_REASON_CONTENT_FILTER),
        ("SPII", chat_pb2.FINISH_REASON_CONTENT_FILTER),
        ("IMAGE_SAFETY", chat_pb2.FINISH_REASON_CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", chat_pb2.FINISH_REASON_OTHER),
        ("OTHER", chat_pb2.FINISH_REASON_OTHER),
        ("LANGUAGE", chat_pb2.FINISH_REASON_OTHER),
        ("SOMETHING_NEW", chat_pb2.FINISH_REASON_OTHER),
    ],
)
def test_finish_reasons(raw: str, expected: int) -> None:
    body = {"candidates": [{"finishReason": raw, "index": 0}]}  # SAFETY: no content at all
    result = DIALECT.parse_chat(response(json.dumps(body)), CHAT)
    assert (result.finish_reason, result.raw_finish_reason) == (expected, raw)
    assert list(result.message.parts) == []
    assert result.message.role == content_pb2.ROLE_ASSISTANT


def test_blocked_prompt_is_a_refusal_not_an_error() -> None:
    body = """{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "safetyRatings": []},
  "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash"}"""
    result = DIALECT.parse_chat(response(body), CHAT)
    assert result.finish_reason == chat_pb2.FINISH_REASON_REFUSAL
    assert result.refusal == "the provider blocked the prompt (PROHIBITED_CONTENT)"
    assert result.raw_finish_reason == "PROHIBITED_CONTENT"
    assert (result.usage.input_tokens, result.usage.total_tokens) == (9, 9)


def test_malformed_bodies_raise_for_the_transport_to_map() -> None:
    for body in ("not json", "[1]", '{"candidates": []}', '{"candidates": ["x"]}'):
        with pytest.raises((ValueError, TypeError, KeyError)):
            DIALECT.parse_chat(response(body), CHAT)


# --- stream -----------------------------------------------------------------------------


def run_stream(body: bytes, pieces: int = 1) -> tuple[list[chat_pb2.StreamChatResponse], Any]:
    """Decodes real SSE bytes (cut into `pieces`-byte writes when > 1) and feeds the parser;
    returns the chunks (final usage chunk included) and the parser."""
    decoder = SseDecoder()
    parser = DIALECT.stream_parser(CHAT)
    chunks: list[chat_pb2.StreamChatResponse] = []
    step = pieces if pieces > 1 else len(body) or 1
    for start in range(0, len(body), step):
        for event in decoder.feed(body[start : start + step]):
            chunks.extend(parser.feed(event))
    for event in decoder.close():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return chunks, parser


REFERENCE_STREAM = (
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n'
    "\r\n"
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"lo! \u00e9\u6f22\U0001f600"}]},"index":0}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n'
    "\r\n"
    'data: {"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":11},"modelVersion":"gemini-2.5-flash","responseId":"r1"}\r\n'
    "\r\n"
).encode()


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_reference_stream_with_crlf_split_anywhere(pieces: int) -> None:
    chunks, parser = run_stream(REFERENCE_STREAM, pieces)
    expected = [
        chat_pb2.StreamChatResponse(
            text_delta="Hel", route=route_pb2.RouteInfo(upstream_request_id="r1")
        ),
        chat_pb2.StreamChatResponse(text_delta="lo! é漢😀"),
        chat_pb2.StreamChatResponse(
            finish_reason=chat_pb2.FINISH_REASON_STOP, raw_finish_reason="STOP"
        ),
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=8, output_tokens=3, total_tokens=11)
        ),
    ]
    assert chunks == expected
    assert parser.finished and not parser.terminated


def test_stream_function_calls_whole_in_one_chunk_with_thoughts_and_trailing_usage() -> None:
    events = [
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": True}]}}
            ],
            "usageMetadata": {"promptTokenCount": 83, "thoughtsTokenCount": 104},
            "responseId": "rX",
        },
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                "thoughtSignature": "c2ln",
                            },
                            {"functionCall": {"name": "get_time", "args": {"tz": "CET"}}},
                        ],
                    },
                    "finishReason": "STOP",
                    "finishMessage": "Model generated function call(s).",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 83,
                "candidatesTokenCount": 14,
                "thoughtsTokenCount": 104,
                "totalTokenCount": 201,
            },
            "responseId": "rX",
        },
        {
            "usageMetadata": {
                "promptTokenCount": 83,
                "candidatesTokenCount": 15,
                "thoughtsTokenCount": 104,
                "totalTokenCount": 202,
            },
            "responseId": "rX",
        },
    ]
    body = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events).encode()
    chunks, _ = run_stream(body)
    assert chunks == [
        chat_pb2.StreamChatResponse(
            reasoning_delta="Hmm.", route=route_pb2.RouteInfo(upstream_request_id="rX")
        ),
        chat_pb2.StreamChatResponse(reasoning_signature="c2ln"),
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[
                chat_pb2.ToolCallDelta(
                    index=0, id="call_rX_0", name="get_weather", arguments_delta='{"city":"Paris"}'
                )
            ]
        ),
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[
                chat_pb2.ToolCallDelta(
                    index=1, id="call_rX_1", name="get_time", arguments_delta='{"tz":"CET"}'
                )
            ],
            finish_reason=chat_pb2.FINISH_REASON_TOOL_CALLS,
            raw_finish_reason="STOP",
        ),
        # The last cumulative usage wins; it is never summed.
        chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(
                input_tokens=83,
                output_tokens=119,
                reasoning_tokens=104,
                total_tokens=202,
            )
        ),
    ]


def test_stream_blocked_prompt_and_safety_finish() -> None:
    blocked = b'data: {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}\r\n\r\n'
    chunks, _ = run_stream(blocked)
    assert [(c.finish_reason, c.raw_finish_reason) for c in chunks[:-1]] == [
        (chat_pb2.FINISH_REASON_REFUSAL, "SAFETY")
    ]
    assert chunks[0].refusal_delta == "the provider blocked the prompt (SAFETY)"
    assert chunks[-1].usage.input_tokens == 4
    safety = b'data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "Sure"}]}, "index": 0}]}\n\ndata: {"candidates": [{"finishReason": "SAFETY", "index": 0}]}\n\n'
    chunks, _ = run_stream(safety)
    assert chunks[1].finish_reason == chat_pb2.FINISH_REASON_CONTENT_FILTER
    assert chunks[-1].usage.total_tokens == 0


def test_stream_without_finish_reason_is_truncated() -> None:
    body = b'data: {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}], "responseId": "r1"}\r\n\r\n'
    with pytest.raises(GatewayError) as caught:
        run_stream(body)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "UPSTREAM_STREAM_TRUNCATED"


@pytest.mark.parametrize("wrapped", [False, True])
def test_error_inside_a_200_stream_raises_the_mapped_error(wrapped: bool) -> None:
    parser = DIALECT.stream_parser(CHAT)
    first = parser.feed(SseEvent("", '{"candidates": [{"content": {"parts": [{"text": "Par"}]}}]}'))
    assert [c.text_delta for c in first] == ["Par"]
    error = {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    with pytest.raises(GatewayError) as caught:
        parser.feed(SseEvent("", json.dumps([error] if wrapped else error, indent=2)))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert caught.value.metadata["upstreamStatus"] == "503"
    assert caught.value.metadata["upstreamType"] == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("error", "code", "reason", "status"),
    [
        (
            {"status": "RESOURCE_EXHAUSTED", "message": "slow down"},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            "429",
        ),
        ({"message": "something broke"}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL", "500"),
        (
            {"code": 500, "status": "INTERNAL"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_INTERNAL",
            "500",
        ),
    ],
)
def test_in_stream_errors_without_a_code_use_the_status_name(
    error: dict[str, Any], code: grpc.StatusCode, reason: str, status: str
) -> None:
    parser = DIALECT.stream_parser(CHAT)
    with pytest.raises(GatewayError) as caught:
        parser.feed(SseEvent("", json.dumps({"error": error})))
    assert (caught.value.code, caught.value.reason) == (code, reason)
    assert caught.value.metadata["upstreamStatus"] == status


def test_stream_content_after_finish_is_a_protocol_error() -> None:
    parser = DIALECT.stream_parser(CHAT)
    parser.feed(
        SseEvent(
            "", '{"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]}'
        )
    )
    with pytest.raises(ValueError):
        parser.feed(SseEvent("", '{"candidates": [{"content": {"parts": [{"text": "b"}]}}]}'))


# --- errors -----------------------------------------------------------------------------

RATE_LIMIT_BODY = """{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]
      },
      {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
      {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}
    ]
  }
}
"""

API_KEY_BODY = """[{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
      {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}
    ]
  }
}]
"""


def envelope(code: int, status: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}, indent=2)


@pytest.mark.parametrize(
    ("status", "body", "headers", "code", "reason", "retry_after", "metadata"),
    [
        (
            429,
            RATE_LIMIT_BODY,
            {},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            27.0,
            {"upstreamType": "RESOURCE_EXHAUSTED"},
        ),
        (
            429,
            RATE_LIMIT_BODY,
            {"retry-after": "3"},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            3.0,
            {},
        ),
        (
            429,
            RATE_LIMIT_BODY.replace('"27s"', '"0.5s"'),
            {},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            0.5,
            {},
        ),
        (
            400,
            API_KEY_BODY,
            {},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_AUTH_FAILED",
            None,
            {
                "upstreamStatus": "400",
                "upstreamCode": "API_KEY_INVALID",
                "upstreamType": "INVALID_ARGUMENT",
            },
        ),
        (
            401,
            envelope(
                401, "UNAUTHENTICATED", "Request is missing required authentication credential."
            ),
            {},
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_AUTH_FAILED",
            None,
            {"upstreamStatus": "401"},
        ),
        (
            400,
            envelope(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
            None,
            {},
        ),
        (
            400,
            envelope(
                400,
                "INVALID_ARGUMENT",
                "* GenerateContentRequest.contents: contents is not specified",
            ),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UPSTREAM_INVALID_REQUEST",
            None,
            {},
        ),
        (
            400,
            envelope(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            {},
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_FAILED_PRECONDITION",
            None,
            {"upstreamType": "FAILED_PRECONDITION"},
        ),
        (
            403,
            envelope(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
            {},
            grpc.StatusCode.PERMISSION_DENIED,
            "UPSTREAM_PERMISSION_DENIED",
            None,
            {},
        ),
        (
            404,
            envelope(404, "NOT_FOUND", "models/x is not found for API version v1beta."),
            {},
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
            None,
            {},
        ),
        (
            500,
            envelope(500, "INTERNAL", "An internal error has occurred."),
            {},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_INTERNAL",
            None,
            {},
        ),
        (
            503,
            envelope(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            {"x-request-id": "rq-1"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            None,
            {"upstreamRequestId": "rq-1"},
        ),
        (
            504,
            envelope(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
            {},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
            None,
            {"upstreamType": "DEADLINE_EXCEEDED"},
        ),
        (
            502,
            "<html><title>Error 502 (Server Error)!!1</title></html>",
            {"retry-after-ms": "1500"},
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_BAD_GATEWAY",
            1.5,
            {"upstreamStatus": "502"},
        ),
        (500, "", {}, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL", None, {}),
        # A 200 + JSON error where a stream was expected reaches the dialect as 502.
        (
            502,
            RATE_LIMIT_BODY,
            {},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            27.0,
            {"upstreamStatus": "429"},
        ),
    ],
)
def test_parse_error(
    status: int,
    body: str,
    headers: dict[str, str],
    code: grpc.StatusCode,
    reason: str,
    retry_after: float | None,
    metadata: dict[str, str],
) -> None:
    error = DIALECT.parse_error(HttpResponse(status, headers, body.encode()), CHAT, NOW)
    assert (error.code, error.reason, error.retry_after) == (code, reason, retry_after)
    assert error.metadata["provider"] == "gemini"
    assert error.metadata["model"] == "gemini-2.5-flash"
    for key, value in metadata.items():
        assert error.metadata[key] == value
    assert "quota" not in error.message and "API key" not in error.message  # no upstream text


def test_retry_after_http_date_is_relative_to_now() -> None:
    error = DIALECT.parse_error(
        HttpResponse(
            429, {"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, RATE_LIMIT_BODY.encode()
        ),
        CHAT,
        NOW,
    )
    assert error.retry_after == 10.0


# --- embeddings -------------------------------------------------------------------------


def test_embed_requests_one_and_many() -> None:
    one = DIALECT.embed_request(
        embed_pb2.EmbedRequest(model="gemini-embed", inputs=["hello"], dimensions=3), EMBED
    )
    assert (one.method, one.url) == ("POST", "models/text-embedding-004:embedContent")
    assert one.json_body == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3}
    many = DIALECT.embed_request(
        embed_pb2.EmbedRequest(model="gemini-embed", inputs=["a", "b"]), EMBED
    )
    assert many.url == "models/text-embedding-004:batchEmbedContents"
    assert many.json_body == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}},
        ]
    }


def test_embed_batches_over_the_upstream_limit_are_refused() -> None:
    at_limit = DIALECT.embed_request(
        embed_pb2.EmbedRequest(model="gemini-embed", inputs=["x"] * 100), EMBED
    )
    assert len(at_limit.json_body["requests"]) == 100
    with pytest.raises(GatewayError) as caught:
        DIALECT.embed_request(
            embed_pb2.EmbedRequest(model="gemini-embed", inputs=["x"] * 101), EMBED
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["inputs"]
    assert "at most 100" in caught.value.field_violations[0].description


def test_parse_embed_one_and_many_in_order() -> None:
    one = DIALECT.parse_embed(response('{"embedding": {"values": [0.25, -0.5]}}'), EMBED)
    assert [(e.index, list(e.values)) for e in one.embeddings] == [(0, [0.25, -0.5])]
    many = DIALECT.parse_embed(
        response('{"embeddings": [{"values": [1, 0]}, {"values": [0, 1]}]}', x_request_id="e1"),
        EMBED,
    )
    assert [(e.index, list(e.values)) for e in many.embeddings] == [(0, [1, 0]), (1, [0, 1])]
    assert many.route.upstream_request_id == "e1"
    with pytest.raises(KeyError):
        DIALECT.parse_embed(response('{"nothing": []}'), EMBED)


# --- factory ----------------------------------------------------------------------------


async def test_factory_builds_the_client_with_key_and_base_url() -> None:
    config = config_pb2.ProviderConfig(
        name="g", api_key_env="GEMINI_UNIT_KEY", gemini=config_pb2.GeminiProviderConfig()
    )
    provider = factory_for("gemini")(config, {"GEMINI_UNIT_KEY": "k-123"})
    assert isinstance(provider, HttpProvider)
    assert provider.kind == "gemini"
    assert provider.default_capabilities.vision and not provider.default_capabilities.embeddings
    settings = provider.client.settings
    assert settings.base_url == "https://generativelanguage.googleapis.com/v1beta/"
    assert settings.headers == {"x-goog-api-key": "k-123"}
    config.gemini.api_version = "v1"
    config.base_url = ""
    other = create_gemini(config, {"GEMINI_UNIT_KEY": "k"})
    assert isinstance(other, HttpProvider)
    assert other.client.settings.base_url == "https://generativelanguage.googleapis.com/v1/"
    await provider.aclose()
    await other.aclose()
