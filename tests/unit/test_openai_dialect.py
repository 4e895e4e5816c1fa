"""Golden tests of the OpenAI transforms on recorded wire data (reference §2, §3, §7),
both directions, with no sockets."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.errors import GatewayError
from service.providers.azure import AzureOpenAIDialect
from service.providers.base import Capabilities, Deployment
from service.providers.framing import SseDecoder
from service.providers.http import HttpResponse
from service.providers.openai import CompatibleDialect, OpenAIDialect, OpenAIOptions
from service.providers.upstream_errors import stream_truncated

DEPLOYMENT = Deployment("gpt", "openai", "openai", "gpt-4o-mini", Capabilities())
NOW = 1_767_225_600.0


def _events(body: str) -> list[object]:
    decoder = SseDecoder()
    return [*decoder.feed(body.encode()), *decoder.close()]


def _run_stream(
    body: str, dialect: OpenAIDialect | None = None
) -> list[chat_pb2.StreamChatResponse]:
    parser = (dialect or OpenAIDialect("openai")).stream_parser(DEPLOYMENT)
    chunks = [c for event in _events(body) for c in parser.feed(event)]
    return chunks + parser.finish()


def test_rich_request_body() -> None:
    schema = struct_pb2.Struct()
    schema.update(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    )
    user = content_pb2.Message(
        role=content_pb2.ROLE_USER,
        name="alice",
        parts=[
            content_pb2.Part(text="What is in this image?"),
            content_pb2.Part(
                image=content_pb2.Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
            ),
        ],
    )
    request = chat_pb2.ChatRequest(
        model="gpt",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Be brief.")]
            ),
            user,
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.2,
            max_output_tokens=128,
            stop_sequences=["\n\n"],
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            top_k=5,
            reasoning_budget_tokens=100,
            response_format=chat_pb2.ResponseFormat(type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT),
        ),
        tools=[content_pb2.Tool(name="get_weather", parameters=schema)],
        tool_choice=content_pb2.ToolChoice(tool_name="get_weather"),
    )
    spec = OpenAIDialect("openai").chat_request(request, DEPLOYMENT, stream=True)
    assert (spec.method, spec.url) == ("POST", "chat/completions")
    assert spec.json_body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "name": "alice",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            },
        ],
        "temperature": 0.2,
        "max_completion_tokens": 128,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "stop": ["\n\n"],
        "response_format": {"type": "json_object"},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    compat = CompatibleDialect(
        "local", OpenAIOptions(max_tokens_field="max_tokens", send_top_k=True, stream_usage=False)
    )
    body = compat.chat_request(request, DEPLOYMENT, stream=True).json_body
    assert body["max_tokens"] == 128 and body["top_k"] == 5
    assert "stream_options" not in body and "max_completion_tokens" not in body


def test_azure_paths() -> None:
    classic = AzureOpenAIDialect("az", "2024-10-21", v1_api=False)
    request = chat_pb2.ChatRequest(
        model="gpt",
        messages=[
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="x")])
        ],
    )
    assert classic.chat_request(request, DEPLOYMENT, False).url == (
        "openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    )
    assert classic.embed_request(
        embed_pb2.EmbedRequest(model="e", inputs=["a"]), DEPLOYMENT
    ).url == ("openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21")
    assert (
        AzureOpenAIDialect("az", "x", v1_api=True).chat_request(request, DEPLOYMENT, False).url
        == "openai/v1/chat/completions"
    )


RESPONSE = """{"id":"chatcmpl-9x1","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini-2024-07-18",
 "choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,
   "tool_calls":[{"id":"call_a1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}}]},
   "logprobs":null,"finish_reason":"tool_calls"}],
 "usage":{"prompt_tokens":52,"completion_tokens":17,"total_tokens":69,
   "prompt_tokens_details":{"cached_tokens":12,"audio_tokens":0},
   "completion_tokens_details":{"reasoning_tokens":5,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},
 "system_fingerprint":"fp_x"}"""


def test_parse_non_streaming_response() -> None:
    response = OpenAIDialect("openai").parse_chat(
        HttpResponse(200, {}, RESPONSE.encode()), DEPLOYMENT
    )
    assert json_format.MessageToDict(response) == {
        "message": {
            "role": "ROLE_ASSISTANT",
            "parts": [
                {
                    "toolCall": {
                        "id": "call_a1",
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    }
                }
            ],
        },
        "finishReason": "FINISH_REASON_TOOL_CALLS",
        "rawFinishReason": "tool_calls",
        "usage": {
            "inputTokens": "52",
            "outputTokens": "17",
            "totalTokens": "69",
            "cachedInputTokens": "12",
            "reasoningTokens": "5",
        },
        "providerMetadata": {"system_fingerprint": "fp_x"},
        # The completion's id names the request when no header does.
        "route": {"upstreamRequestId": "chatcmpl-9x1"},
    }


TEXT_STREAM = """data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"lo!"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}

data: [DONE]

"""

TOOL_STREAM = """data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\\":\\"Paris\\"}"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

"""


def test_text_stream_golden() -> None:
    chunks = [c for c in _run_stream(TEXT_STREAM) if c.ByteSize()]
    assert [json_format.MessageToDict(c) for c in chunks] == [
        {"textDelta": "Hel"},
        {"textDelta": "lo!"},
        {"finishReason": "FINISH_REASON_STOP", "rawFinishReason": "stop"},
        {"usage": {"inputTokens": "9", "outputTokens": "3", "totalTokens": "12"}},
    ]


def test_tool_stream_golden() -> None:
    chunks = [c for c in _run_stream(TOOL_STREAM) if c.ByteSize()]
    assert [json_format.MessageToDict(c) for c in chunks] == [
        {"toolCallDeltas": [{"id": "call_a1", "name": "get_weather"}]},
        {"toolCallDeltas": [{"argumentsDelta": '{"ci'}]},
        {"toolCallDeltas": [{"argumentsDelta": 'ty":"Paris"}'}]},
        {"finishReason": "FINISH_REASON_TOOL_CALLS", "rawFinishReason": "tool_calls"},
        {"usage": {}},
    ]


def test_stream_without_done_is_truncated() -> None:
    with pytest.raises(GatewayError) as caught:
        _run_stream(TEXT_STREAM.replace("data: [DONE]\n\n", ""))
    assert caught.value.reason == stream_truncated("p", "m").reason


@pytest.mark.parametrize(
    "body",
    [
        "",
        "data: [DONE]\n\n",
        ": keep-alive\n\n"
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        "data: [DONE]\n\n",
        'data: {"choices":[],"usage":{"prompt_tokens":9000,"completion_tokens":0}}\n\n',
    ],
    ids=["nothing", "done-only", "role-only", "usage-only"],
)
def test_stream_without_any_output_is_empty_not_truncated(body: str) -> None:
    """llama.cpp answers an over-long prompt with such a stream: a failure of its own,
    which must not count against the deployment's breaker."""
    with pytest.raises(GatewayError) as caught:
        _run_stream(body)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_EMPTY_STREAM")
    assert error.retryable and error.failover and not error.upstream_fault


def test_in_stream_error() -> None:
    body = 'data: {"choices":[{"index":0,"delta":{"content":"Partial"},"finish_reason":null}]}\n\ndata: {"error":{"message":"Rate limit. Please try again in 1.5s","type":"tokens","param":null,"code":"rate_limit_exceeded"}}\n\n'
    parser = OpenAIDialect("openai").stream_parser(DEPLOYMENT)
    events = _events(body)
    assert parser.feed(events[0])[0].text_delta == "Partial"
    with pytest.raises(GatewayError) as caught:
        parser.feed(events[1])
    assert (caught.value.code, caught.value.reason, caught.value.retry_after) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        1.5,
    )


@pytest.mark.parametrize(
    ("status", "headers", "body", "reason", "retry_after"),
    [
        (
            429,
            {"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"},
            b'{"error":{"message":"x","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
            "RATE_LIMITED",
            10.0,
        ),
        (
            429,
            {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"},
            b'{"error":{"message":"x","type":"tokens","param":null,"code":"rate_limit_exceeded"}}',
            "RATE_LIMITED",
            360.0,
        ),
        (
            429,
            {},
            b'{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":null}}',
            "UPSTREAM_QUOTA_EXHAUSTED",
            None,
        ),
        (
            429,
            {},
            b'{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 7 seconds."}}',
            "RATE_LIMITED",
            7.0,
        ),
        (
            429,
            {},
            b'{"error":{"message":"Rate limit reached for gpt-4o-mini. Please try again in 644ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
            "RATE_LIMITED",
            0.644,
        ),
        (500, {"x-should-retry": "false"}, b"", "UPSTREAM_INTERNAL", None),
        (
            401,
            {"x-request-id": "req_9"},
            b'{"error":{"code":"401","message":"Access denied"}}',
            "UPSTREAM_AUTH_FAILED",
            None,
        ),
    ],
)
def test_error_mapping(
    status: int, headers: dict[str, str], body: bytes, reason: str, retry_after: float | None
) -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    error = OpenAIDialect("openai").parse_error(
        HttpResponse(status, headers, body), DEPLOYMENT, now
    )
    assert error.reason == reason
    assert error.retry_after == retry_after
    if status == 500:
        assert error.retryable is False, "x-should-retry: false wins"
    if "x-request-id" in headers:
        assert error.metadata["upstreamRequestId"] == "req_9"


def test_embeddings_request_and_response() -> None:
    dialect = OpenAIDialect("openai")
    spec = dialect.embed_request(
        embed_pb2.EmbedRequest(model="e", inputs=["a", "b"], dimensions=2), DEPLOYMENT
    )
    assert (spec.url, spec.json_body) == (
        "embeddings",
        {"model": "gpt-4o-mini", "input": ["a", "b"], "encoding_format": "float", "dimensions": 2},
    )
    body = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, -0.5]},
            {
                "object": "embedding",
                "index": 0,
                "embedding": "AACAPwAAAMA=",
            },  # base64 float32 [1.0, -2.0]
        ],
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    parsed = dialect.parse_embed(HttpResponse(200, {}, json.dumps(body).encode()), DEPLOYMENT)
    assert [list(e.values) for e in parsed.embeddings] == [[1.0, -2.0], [0.5, -0.5]]
    assert parsed.usage.input_tokens == 5


def _calls_without_ids(completion_id: str | None) -> dict[str, object]:
    body: dict[str, object] = {
        "created": 1767225600,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"type": "function", "function": {"name": "a", "arguments": "{}"}},
                        {"type": "function", "function": {"name": "b", "arguments": "{}"}},
                    ],
                },
            }
        ],
    }
    if completion_id:
        body["id"] = completion_id
    return body


def test_tool_calls_without_ids_get_ids_unique_per_completion() -> None:
    dialect = CompatibleDialect("vllm")

    def ids(body: dict[str, object]) -> list[str]:
        response = dialect.parse_chat(HttpResponse(200, {}, json.dumps(body).encode()), DEPLOYMENT)
        return [p.tool_call.id for p in response.message.parts if p.HasField("tool_call")]

    # Completion ids may be constant or missing: ids never repeat across calls.
    seen = [*ids(_calls_without_ids("chatcmpl-1")), *ids(_calls_without_ids("chatcmpl-1"))]
    seen += ids(_calls_without_ids(None))
    assert len(seen) == len(set(seen)) == 6
    assert all(i.startswith("call_") and len(i) == 29 for i in seen)


def test_streamed_tool_calls_without_ids_get_ids_unique_per_completion() -> None:
    def stream(completion_id: str) -> list[str]:
        events = [
            {"id": completion_id, "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {"id": completion_id, "created": 1, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"name": "a", "arguments": "{\"x\""}}]}}]},
            {"id": completion_id, "created": 1, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": ": 1}"}}]}}]},
            {"id": completion_id, "created": 1, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 1, "function": {"name": "b", "arguments": "{}"}}]}}]},
            {"id": completion_id, "created": 1, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        ]  # fmt: skip
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        chunks = _run_stream(body, CompatibleDialect("vllm"))
        return [d.id for c in chunks for d in c.tool_call_deltas if d.id]

    seen = stream("chatcmpl-7") + stream("chatcmpl-7")
    assert len(seen) == len(set(seen)) == 4, "one id per call, never repeated"
    assert all(i.startswith("call_") for i in seen)
