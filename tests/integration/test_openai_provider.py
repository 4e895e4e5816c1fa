"""OpenAI, Azure OpenAI and OpenAI-compatible servers through the running gateway,
against real loopback fakes that speak their wire format."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from tests.fakes.http_server import FakeHttpServer, FakeResponse, Write
from tests.fakes.openai_fake import (
    OpenAIFake,
    OpenAIFakeConfig,
    chunk,
    error_body,
    sse_body,
    stream_chunks,
    stream_response,
)
from tests.support import Gateway, chat_request, details_of, running_gateway, user

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
# One attempt per call, no circuit breaker and no quota cool-down: every test sees what
# one upstream answer maps to, and no test's answer keeps the next from the upstream.
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}, quota_cool_down: 0s}}
providers:
  - name: openai
    api_key_env: OPENAI_TEST_KEY
    base_url: {openai}/v1
    timeouts: {{read: 2s}}
    openai: {{organization: org-test}}
  - name: azure
    api_key_env: AZURE_TEST_KEY
    base_url: {azure}
    azure_openai: {{api_version: 2024-10-21}}
  - name: azure-v1
    api_key_env: AZURE_TEST_KEY
    base_url: {azure}
    azure_openai: {{v1_api: true, entra_token: true}}
  - name: vllm
    api_key_env: VLLM_TEST_KEY
    base_url: {compat}/v1
    headers: {{x-team: search}}
    openai_compatible: {{auth_scheme: AUTH_SCHEME_HEADER, auth_header: x-llm-key}}
models:
  - alias: gpt
    provider: openai
    upstream_model: gpt-4o-mini
    pricing: {{input_per_million: 0.15, output_per_million: 0.6}}
  - {{alias: gpt-embed, provider: openai, upstream_model: text-embedding-3-small, capabilities: {{embeddings: true}}}}
  - {{alias: azure-gpt, provider: azure, upstream_model: gpt-4o-deploy}}
  - {{alias: azure-missing, provider: azure, upstream_model: no-such-deploy}}
  - {{alias: azure-v1, provider: azure-v1, upstream_model: gpt-4o-deploy}}
  - {{alias: azure-embed, provider: azure, upstream_model: gpt-4o-deploy, capabilities: {{embeddings: true}}}}
  - {{alias: local, provider: vllm, upstream_model: qwen2.5-7b}}
"""
KEYS = {"OPENAI_TEST_KEY": "sk-test", "AZURE_TEST_KEY": "az-key", "VLLM_TEST_KEY": "vllm-key"}


@dataclass
class World:
    gateway: Gateway
    openai: FakeHttpServer
    azure: FakeHttpServer
    compat: FakeHttpServer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world() -> AsyncIterator[World]:
    openai_handler = OpenAIFake(OpenAIFakeConfig(key="sk-test", request_id="req_openai_1"))
    azure_handler = OpenAIFake(OpenAIFakeConfig(key="az-key", auth="azure", request_id="apim-1"))
    compat_handler = OpenAIFake(OpenAIFakeConfig(key="vllm-key", auth="header:x-llm-key"))
    async with (
        FakeHttpServer(openai_handler.handle) as openai,
        FakeHttpServer(azure_handler.handle) as azure,
        FakeHttpServer(compat_handler.handle) as compat,
    ):
        config = CONFIG.format(openai=openai.url, azure=azure.url, compat=compat.url)
        async with running_gateway(config, environ=KEYS) as gateway:
            yield World(gateway, openai, azure, compat)


def _tool(name: str) -> content_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"text": {"type": "string"}}})
    return content_pb2.Tool(name=name, description=f"{name} tool", parameters=schema)


async def _stream(world: World, request: chat_pb2.ChatRequest) -> list[chat_pb2.StreamChatResponse]:
    return [c async for c in world.gateway.stub.StreamChat(request, timeout=10)]


async def _stream_error(
    world: World, request: chat_pb2.ChatRequest
) -> tuple[list[chat_pb2.StreamChatResponse], grpc.aio.AioRpcError]:
    received: list[chat_pb2.StreamChatResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in world.gateway.stub.StreamChat(request, timeout=10):
            received.append(item)
    return received, caught.value


async def test_chat_sends_the_exact_wire_request(world: World) -> None:
    request = chat_pb2.ChatRequest(
        model="gpt",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Be brief.")]
            ),
            user("Hello OpenAI"),
        ],
        generation_config=chat_pb2.GenerationConfig(
            temperature=0.2, top_p=0.9, max_output_tokens=64, seed=7, stop_sequences=["\n\n"]
        ),
    )
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert response.message.parts[0].text == "Hello OpenAI"
    assert response.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 2)
    assert response.usage.cost_usd == pytest.approx((4 * 0.15 + 2 * 0.6) / 1e6)
    assert response.route.provider == "openai"
    assert response.route.upstream_request_id == "req_openai_1"
    sent = world.openai.requests[-1]
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["openai-organization"] == "org-test"
    assert sent.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello OpenAI"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 64,
        "seed": 7,
        "stop": ["\n\n"],
    }


async def test_stream_text_usage_and_request_id(world: World) -> None:
    chunks = await _stream(world, chat_request("one two three", model="gpt"))
    assert [c.text_delta for c in chunks if c.text_delta] == ["one", " two", " three"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_STOP]
    assert chunks[-1].usage.output_tokens == 3 and chunks[-1].usage.input_tokens == 3
    assert chunks[-1].usage.HasField("cost_usd")
    assert chunks[0].route.upstream_request_id == "req_openai_1"
    sent = world.openai.requests[-1].json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_streamed_tool_calls_two_in_one_turn(world: World) -> None:
    request = chat_request(
        "call lookup and search please", model="gpt", tools=[_tool("lookup"), _tool("search")]
    )
    chunks = await _stream(world, request)
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in c.tool_call_deltas:
            entry = calls.setdefault(d.index, {"id": d.id, "name": d.name, "args": ""})
            if d.id:
                assert entry["id"] == d.id
            entry["args"] += d.arguments_delta
    assert [calls[i]["name"] for i in sorted(calls)] == ["lookup", "search"]
    assert [calls[i]["id"] for i in sorted(calls)] == ["call_0_lookup", "call_1_search"]
    assert [json.loads(calls[i]["args"]) for i in sorted(calls)] == [
        {"text": "call lookup and search please", "n": 0},
        {"text": "call lookup and search please", "n": 1},
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]
    unary = await world.gateway.stub.Chat(request, timeout=10)
    assert [p.tool_call.name for p in unary.message.parts] == ["lookup", "search"]
    assert unary.finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    sent = world.openai.requests[-1].json()
    assert sent["tools"][0] == {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "lookup tool",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }


async def test_interleaved_tool_call_fragments_are_keyed_by_index(world: World) -> None:
    model = "gpt-4o-mini"
    events: list[dict[str, object] | str] = [
        chunk(model, {"role": "assistant", "content": None}),
        chunk(
            model,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            },
        ),
        chunk(
            model,
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "g", "arguments": '{"y'},
                    }
                ]
            },
        ),
        chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":"\\u00e9'}}]}),
        chunk(model, {"tool_calls": [{"index": 1, "function": {"arguments": '":2}'}}]}),
        chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": '\\""}'}}]}),
        chunk(model, {}, "tool_calls"),
        "[DONE]",
    ]
    world.openai.script(stream_response(sse_body(events), piece=7))
    chunks = await _stream(world, chat_request("x", model="gpt", tools=[_tool("f"), _tool("g")]))
    args: dict[int, str] = {}
    for c in chunks:
        for d in c.tool_call_deltas:
            args[d.index] = args.get(d.index, "") + d.arguments_delta
    assert json.loads(args[0]) == {"x": 'é"'}
    assert json.loads(args[1]) == {"y": 2}
    # No usage was sent: the gateway's estimate, marked, in place of zeros.
    usage = chunks[-1].usage
    returned = sum(
        len(d.name.encode()) + len(d.arguments_delta.encode())
        for c in chunks
        for d in c.tool_call_deltas
    )
    assert usage.estimated
    assert usage.output_tokens == -(-returned // 4) == 7
    assert usage.input_tokens > 0


async def test_tool_result_round_trip_on_the_wire(world: World) -> None:
    call = content_pb2.ToolCall(id="call_9", name="lookup", arguments='{"q":"x"}')
    request = chat_pb2.ChatRequest(
        model="gpt",
        tools=[_tool("lookup")],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO),
        messages=[
            user("look it up"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(tool_call=call)]
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(tool_call_id="call_9", content="42")
                    )
                ],
            ),
        ],
    )
    response = await world.gateway.stub.Chat(request, timeout=10)
    assert response.message.parts[0].text == "tool said 42"
    sent = world.openai.requests[-1].json()
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "42"},
    ]
    assert sent["tool_choice"] == "auto"


async def test_image_input_and_json_schema_output(world: World) -> None:
    message = user("what is this?")
    message.parts.add(image=content_pb2.Image(data=b"\x89PNG", mime_type="image/png"))
    message.parts.add(image=content_pb2.Image(url="https://example.test/cat.jpg"))
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"echo": {"type": "string"}}})
    config = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="answer",
            json_schema=schema,
            strict=True,
        )
    )
    response = await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="gpt", messages=[message], generation_config=config), timeout=10
    )
    assert json.loads(response.message.parts[0].text) == {"echo": "what is this?"}
    sent = world.openai.requests[-1].json()
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()},
        },
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"echo": {"type": "string"}}},
            "strict": True,
        },
    }


async def test_embeddings_float_and_base64_in_index_order(world: World) -> None:
    request = embed_pb2.EmbedRequest(
        model="gpt-embed", inputs=["alpha", "beta gamma"], dimensions=3
    )
    response = await world.gateway.stub.Embed(request, timeout=10)
    assert [e.index for e in response.embeddings] == [0, 1]
    from tests.fakes.openai_fake import embedding_vector

    assert [list(e.values) for e in response.embeddings] == [
        pytest.approx(embedding_vector("alpha", 3)),
        pytest.approx(embedding_vector("beta gamma", 3)),
    ]
    assert response.usage.input_tokens == 3
    sent = world.openai.requests[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json() == {
        "model": "text-embedding-3-small",
        "input": ["alpha", "beta gamma"],
        "encoding_format": "float",
        "dimensions": 3,
    }
    vector = embedding_vector("alpha", 3)
    import struct as struct_module

    packed = base64.b64encode(struct_module.pack("<3f", *vector)).decode()
    world.openai.script(
        FakeResponse.json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": packed}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )
    )
    decoded = await world.gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="gpt-embed", inputs=["alpha"]), timeout=10
    )
    assert list(decoded.embeddings[0].values) == pytest.approx(vector, rel=1e-6)


@pytest.mark.parametrize(
    ("response", "code", "reason", "retry_ms"),
    [
        (
            FakeResponse.json(
                error_body(
                    "Rate limit reached for gpt-4o-mini. Please try again in 644ms.",
                    "tokens",
                    "rate_limit_exceeded",
                ),
                429,
                {"retry-after": "2"},
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            2000,
        ),
        (
            FakeResponse.json(
                error_body("Please try again in 644ms.", "tokens", "rate_limit_exceeded"), 429
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            644,
        ),
        (
            FakeResponse.json(
                error_body("slow down", "requests", "rate_limit_exceeded"),
                429,
                {
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "1m30s",
                    "retry-after-ms": "1500",
                },
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            1500,
        ),
        (
            FakeResponse.json(
                error_body(
                    "You exceeded your current quota, please check your plan.",
                    "insufficient_quota",
                    "insufficient_quota",
                ),
                429,
                {"retry-after": "5"},
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_QUOTA_EXHAUSTED",
            None,
        ),
        (
            FakeResponse.json(
                error_body(
                    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                    "messages",
                ),
                400,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
            None,
        ),
        (
            FakeResponse.json(
                error_body(
                    "The model `x` does not exist", "invalid_request_error", "model_not_found"
                ),
                404,
            ),
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
            None,
        ),
        (
            FakeResponse.json(error_body("The server had an error", "server_error"), 500),
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_INTERNAL",
            None,
        ),
        (
            FakeResponse.raw(b"<html><body>502 Bad Gateway</body></html>", 502, "text/html"),
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_BAD_GATEWAY",
            None,
        ),
        (
            FakeResponse.json(error_body("Overloaded", "server_error"), 503, {"retry-after": "3"}),
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            3000,
        ),
        (
            FakeResponse.json(
                error_body("bad", "invalid_request_error"), 400, {"x-should-retry": "true"}
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UPSTREAM_INVALID_REQUEST",
            None,
        ),
    ],
)
async def test_upstream_errors_map_to_precise_statuses(
    world: World, response: FakeResponse, code: grpc.StatusCode, reason: str, retry_ms: int | None
) -> None:
    world.openai.script(response)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="gpt"), timeout=10)
    # A 429 saying no request remains holds the deployment back until its reset
    # (test_upstream_rate_limits.py); the cases after it start afresh.
    world.gateway.server.router.quotas.forget_reports()
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (code, reason)
    assert details.error_info.metadata["provider"] == "openai"
    assert details.error_info.metadata["upstreamStatus"] == str(response.status)
    if retry_ms is None:
        assert details.retry_info is None
    else:
        assert details.retry_info is not None
        assert details.retry_info.retry_delay.ToMilliseconds() == retry_ms
    assert "Rate limit reached" not in details.message, "upstream bodies never reach the caller"


async def test_gateway_key_rejected_is_internal_not_unauthenticated(world: World) -> None:
    world.openai.script(
        FakeResponse.json(
            error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
            401,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="gpt"), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
    )
    assert details.error_info.metadata["upstreamCode"] == "invalid_api_key"


async def test_mid_stream_error_ends_with_the_mapped_status(world: World) -> None:
    events: list[dict[str, object] | str] = [
        chunk("m", {"role": "assistant", "content": ""}),
        chunk("m", {"content": "Partial"}),
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    ]
    world.openai.script(stream_response(sse_body(events)))
    received, error = await _stream_error(world, chat_request(model="gpt"))
    assert [c.text_delta for c in received] == ["Partial"]
    details = details_of(error)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.error_info.metadata["partialOutput"] == "true"
    assert details.error_info.metadata["chunksDelivered"] == "1"


@pytest.mark.parametrize("cut", ["no_done", "no_finish", "reset"])
async def test_cut_streams_never_end_ok(world: World, cut: str) -> None:
    events: list[dict[str, object] | str] = [
        chunk("m", {"content": "Hel"}),
        chunk("m", {"content": "lo"}),
    ]
    if cut == "no_done":
        events.append(chunk("m", {}, "stop"))
    body = sse_body(events)
    if cut == "reset":
        response = FakeResponse.stream([body[:40], body[40:]], reset_after=1)
    else:
        response = stream_response(body)
    world.openai.script(response)
    received, error = await _stream_error(world, chat_request(model="gpt"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    reason = details_of(error).error_info.reason
    assert reason == ("UPSTREAM_CONNECTION_LOST" if cut == "reset" else "UPSTREAM_STREAM_TRUNCATED")
    assert not any(c.HasField("usage") for c in received)


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "choices": [',
        b'{"id": "x", "choices": []}',
        b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "\xff\xfe"}, "finish_reason": "stop"}]}',
    ],
)
async def test_malformed_upstream_json_is_internal(world: World, body: bytes) -> None:
    world.openai.script(FakeResponse.raw(body, 200, "application/json"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="gpt"), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )


async def test_malformed_stream_event_and_invalid_utf8_are_internal(world: World) -> None:
    world.openai.script(stream_response(b'data: {"choices": [\n\n'))
    _, error = await _stream_error(world, chat_request(model="gpt"))
    assert details_of(error).error_info.reason == "UPSTREAM_PROTOCOL_ERROR"
    world.openai.script(
        stream_response(b'data: {"choices": [{"index":0,"delta":{"content":"\xc3\x28"}}]}\n\n')
    )
    _, error = await _stream_error(world, chat_request(model="gpt"))
    assert (error.code(), details_of(error).error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_PROTOCOL_ERROR",
    )


@pytest.mark.parametrize(
    ("line_ending", "space", "piece", "comments"),
    [
        ("\r\n", True, 0, False),
        ("\r", False, 0, True),
        ("\n", True, 1, True),
        ("\r\n", False, 3, False),
    ],
)
async def test_stream_framing_variants_parse_identically(
    world: World, line_ending: str, space: bool, piece: int, comments: bool
) -> None:
    text = "héllo wörld 🙂 done"
    body_request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "stream_options": {"include_usage": True},
    }
    events: list[dict[str, object] | str] = [
        chunk(
            "", None, prompt_filter_results=[{"prompt_index": 0}]
        ),  # Azure-style empty first chunk
        *stream_chunks(body_request),
        "[DONE]",
    ]
    body = sse_body(events, line_ending, space)
    if comments:
        body = (
            b": keep-alive"
            + line_ending.encode() * 2
            + body.replace(b"data:", b": PROCESSING" + line_ending.encode() + b"data:", 2)
        )
    world.openai.script(stream_response(body, piece=piece))
    chunks = await _stream(world, chat_request(text, model="gpt"))
    assert "".join(c.text_delta for c in chunks) == text
    assert chunks[-1].usage.input_tokens == 4


async def test_usage_on_the_finish_chunk_and_large_events(world: World) -> None:
    big = "x" * (100 * 1024)
    events: list[dict[str, object] | str] = [
        chunk("m", {"content": big}),
        {
            **chunk("m", {}, "length"),
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
        },
        "[DONE]",
    ]
    world.openai.script(stream_response(sse_body(events), piece=4096))
    chunks = await _stream(world, chat_request(model="gpt"))
    assert "".join(c.text_delta for c in chunks) == big
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_LENGTH]
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (3, 9)


async def test_slow_first_byte_within_the_deadline(world: World) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}
    from tests.fakes.openai_fake import completion

    response = FakeResponse.json(completion(body))
    response.header_delay = 0.3
    world.openai.script(response)
    reply = await world.gateway.stub.Chat(chat_request("slow", model="gpt"), timeout=10)
    assert reply.message.parts[0].text == "slow"


async def test_read_timeout_is_unavailable(world: World) -> None:
    response = FakeResponse.stream([b'data: {"choices":[]}\n\n', b""], delay=0)
    response.writes[1] = Write(b"data: [DONE]\n\n", delay=5)
    world.openai.script(response)
    _, error = await _stream_error(world, chat_request(model="gpt"))
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
    )


async def test_gzip_compressed_body(world: World) -> None:
    from tests.fakes.openai_fake import completion

    body = json.dumps(
        completion({"model": "m", "messages": [{"role": "user", "content": "zipped"}]})
    ).encode()
    world.openai.script(
        FakeResponse(
            200,
            {"content-type": "application/json", "content-encoding": "gzip"},
            [Write(gzip.compress(body))],
        )
    )
    reply = await world.gateway.stub.Chat(chat_request("zipped", model="gpt"), timeout=10)
    assert reply.message.parts[0].text == "zipped"


async def test_azure_classic_deployment_urls_and_api_key(world: World) -> None:
    reply = await world.gateway.stub.Chat(chat_request("hi azure", model="azure-gpt"), timeout=10)
    assert reply.message.parts[0].text == "hi azure"
    assert reply.route.upstream_request_id == "apim-1"
    sent = world.azure.requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-deploy/chat/completions"
    assert sent.query == {"api-version": ["2024-10-21"]}
    assert sent.headers["api-key"] == "az-key" and "authorization" not in sent.headers
    chunks = await _stream(world, chat_request("streamed azure", model="azure-gpt"))
    assert "".join(c.text_delta for c in chunks) == "streamed azure"
    embedded = await world.gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="azure-embed", inputs=["a"]), timeout=10
    )
    assert len(embedded.embeddings) == 1
    assert world.azure.requests[-1].path == "/openai/deployments/gpt-4o-deploy/embeddings"


async def test_azure_v1_api_with_entra_bearer(world: World) -> None:
    reply = await world.gateway.stub.Chat(chat_request("v1", model="azure-v1"), timeout=10)
    assert reply.message.parts[0].text == "v1"
    sent = world.azure.requests[-1]
    assert sent.path == "/openai/v1/chat/completions" and sent.query == {}
    assert sent.headers["authorization"] == "Bearer az-key" and "api-key" not in sent.headers
    assert sent.json()["model"] == "gpt-4o-deploy"


async def test_azure_deployment_not_found_and_content_filter(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="azure-missing"), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    assert details.error_info.metadata["upstreamCode"] == "DeploymentNotFound"
    filtered = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"hate": {"filtered": True, "severity": "high"}},
            },
        }
    }
    world.azure.script(FakeResponse.json(filtered, 400))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="azure-gpt"), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTENT_FILTERED",
    )


async def test_azure_output_filter_is_ok_with_content_filter_finish(world: World) -> None:
    events: list[dict[str, object] | str] = [
        chunk("", None, prompt_filter_results=[{"prompt_index": 0, "content_filter_results": {}}]),
        chunk("gpt-4o", {"content": "Some"}),
        chunk("gpt-4o", {}, "content_filter"),
        "[DONE]",
    ]
    world.azure.script(stream_response(sse_body(events)))
    chunks = await _stream(world, chat_request(model="azure-gpt"))
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_CONTENT_FILTER
    ]


async def test_compatible_server_auth_header_and_fields(world: World) -> None:
    config = chat_pb2.GenerationConfig(max_output_tokens=32, top_k=40)
    reply = await world.gateway.stub.Chat(
        chat_request("local model", model="local", generation_config=config), timeout=10
    )
    assert reply.message.parts[0].text == "local model"
    sent = world.compat.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["x-llm-key"] == "vllm-key" and "authorization" not in sent.headers
    assert sent.headers["x-team"] == "search"
    body = sent.json()
    assert body["max_tokens"] == 32 and body["top_k"] == 40 and "max_completion_tokens" not in body


@pytest.mark.parametrize(
    ("body", "status", "code", "reason"),
    [
        (
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
        ),
        (
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
            503,
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            {
                "error": {
                    "code": 400,
                    "message": "request (9412 tokens) exceeds the available context size (8192 tokens)",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 9412,
                    "n_ctx": 8192,
                }
            },
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
        ),
        (
            {"error": "No models loaded. Please load a model."},
            404,
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
        ),
    ],
)
async def test_compatible_error_shapes(
    world: World, body: dict[str, object], status: int, code: grpc.StatusCode, reason: str
) -> None:
    world.compat.script(FakeResponse.json(body, status))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(model="local"), timeout=10)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (code, reason)


async def test_vllm_reasoning_and_abort_finish(world: World) -> None:
    events: list[dict[str, object] | str] = [
        chunk("q", {"reasoning_content": "thinking..."}),
        chunk("q", {"content": "answer"}),
        chunk("q", {}, "stop"),
        "[DONE]",
    ]
    world.compat.script(stream_response(sse_body(events)))
    chunks = await _stream(world, chat_request(model="local"))
    assert [c.reasoning_delta for c in chunks if c.reasoning_delta] == ["thinking..."]
    world.compat.script(
        stream_response(
            sse_body([chunk("q", {"content": "par"}), chunk("q", {}, "abort"), "[DONE]"])
        )
    )
    received, error = await _stream_error(world, chat_request(model="local"))
    assert [c.text_delta for c in received] == ["par"]
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_error_json_with_200_on_a_stream_request(world: World) -> None:
    world.compat.script(
        FakeResponse.json(
            {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, 200
        )
    )
    _, error = await _stream_error(world, chat_request(model="local"))
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
    )


async def test_connections_are_pooled_and_recover_after_close(world: World) -> None:
    await world.gateway.stub.Chat(chat_request("warm", model="gpt"), timeout=10)
    before = world.openai.connections_accepted
    for i in range(5):
        await world.gateway.stub.Chat(chat_request(f"again {i}", model="gpt"), timeout=10)
    assert world.openai.connections_accepted == before, "keep-alive reuses one connection"
    from tests.fakes.openai_fake import completion

    closing = FakeResponse.json(
        completion({"model": "m", "messages": [{"role": "user", "content": "bye"}]})
    )
    closing.close = True
    world.openai.script(closing)
    assert (
        await world.gateway.stub.Chat(chat_request("bye", model="gpt"), timeout=10)
    ).message.parts[0].text == "bye"
    after_close = await world.gateway.stub.Chat(
        chat_request("new connection", model="gpt"), timeout=10
    )
    assert after_close.message.parts[0].text == "new connection"
    assert world.openai.connections_accepted == before + 1


async def test_finished_streams_return_their_connection_to_the_pool(world: World) -> None:
    await world.gateway.stub.Chat(chat_request("warm", model="gpt"), timeout=10)
    before = world.openai.connections_accepted
    for i in range(5):
        chunks = [
            c
            async for c in world.gateway.stub.StreamChat(
                chat_request(f"s {i}", model="gpt"), timeout=10
            )
        ]
        assert chunks[-1].HasField("usage")
    assert world.openai.connections_accepted == before, (
        "the body after [DONE] is drained, not dropped"
    )
