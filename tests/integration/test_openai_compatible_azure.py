"""Azure OpenAI and OpenAI-compatible (vLLM-style) aliases through the running gateway,
against loopback OpenAI fakes: streamed tools, images, JSON output and embeddings on the
wire, credential headers per auth scheme, capability refusals before any upstream call,
the response-size cap, and servers that omit tool-call ids."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import (
    OpenAIFake,
    OpenAIFakeConfig,
    chunk,
    completion,
    embedding_vector,
    sse_body,
    stream_response,
)
from tests.support import Gateway, chat_request, details_of, running_gateway, user

AZURE_API_VERSION = "2025-04-01-preview"  # not the gateway's default, so it must be sent
CAP_BYTES = 2048

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - name: azure
    api_key_env: CA_AZURE_KEY
    base_url: {azure}
    azure_openai: {{api_version: {api_version}}}
  - name: vllm
    api_key_env: CA_VLLM_KEY
    base_url: {vllm}/v1
    openai_compatible: {{}}
  - name: vllm-bearer
    api_key_env: CA_VLLM_KEY
    base_url: {bearer}/v1
    openai_compatible: {{auth_scheme: AUTH_SCHEME_BEARER}}
  - name: vllm-none
    api_key_env: CA_VLLM_KEY
    base_url: {none}/v1
    openai_compatible: {{auth_scheme: AUTH_SCHEME_NONE}}
  - name: vllm-keyless
    base_url: {keyless}/v1
    openai_compatible: {{}}
  - name: text-only
    base_url: {text_only}/v1
    openai_compatible: {{}}
  - name: capped
    base_url: {capped}/v1
    max_response_bytes: {cap}
    openai_compatible: {{}}
  - name: ids-unique
    base_url: {ids_unique}/v1
    openai_compatible: {{}}
  - name: ids-fixed
    base_url: {ids_fixed}/v1
    openai_compatible: {{}}
  - name: ids-absent
    base_url: {ids_absent}/v1
    openai_compatible: {{}}
models:
  - {{alias: azure-gpt, provider: azure, upstream_model: gpt-4o-deploy}}
  - alias: qwen-vl
    provider: vllm
    upstream_model: Qwen/Qwen2.5-VL-7B-Instruct
    capabilities: {{vision: true}}
  - {{alias: bge, provider: vllm, upstream_model: BAAI/bge-m3, capabilities: {{embeddings: true}}}}
  - {{alias: bearer, provider: vllm-bearer, upstream_model: m}}
  - {{alias: no-auth, provider: vllm-none, upstream_model: m}}
  - {{alias: keyless, provider: vllm-keyless, upstream_model: m}}
  - {{alias: text-default, provider: text-only, upstream_model: llama3}}
  - {{alias: text-explicit, provider: text-only, upstream_model: llama3, capabilities: {{vision: false}}}}
  - {{alias: capped, provider: capped, upstream_model: m}}
  - {{alias: ids-unique, provider: ids-unique, upstream_model: m}}
  - {{alias: ids-fixed, provider: ids-fixed, upstream_model: m}}
  - {{alias: ids-absent, provider: ids-absent, upstream_model: m}}
"""
KEYS = {"CA_AZURE_KEY": "az-key", "CA_VLLM_KEY": "vllm-key"}
# What httpx sends on every request; everything else at the fake is the gateway's choice.
TRANSPORT_HEADERS = frozenset(
    {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length"}
)


def _fake_configs() -> dict[str, OpenAIFakeConfig]:
    def keyless(**kwargs: object) -> OpenAIFakeConfig:
        return OpenAIFakeConfig(auth="none", **kwargs)  # type: ignore[arg-type]

    return {
        "azure": OpenAIFakeConfig(
            key="az-key",
            auth="azure",
            request_id="apim-ca-7",
            stream_piece=13,  # events cut inside lines and escapes
            azure_annotations=True,
        ),
        "vllm": OpenAIFakeConfig(
            key="vllm-key", request_id="vllm-ca-1", stream_piece=7, completion_ids="unique"
        ),
        "bearer": OpenAIFakeConfig(key="vllm-key"),
        "none": keyless(),
        "keyless": keyless(),
        "text_only": keyless(),
        "capped": keyless(),
        "ids_unique": keyless(tool_call_ids=False, completion_ids="unique"),
        "ids_fixed": keyless(tool_call_ids=False, completion_ids="fixed"),
        "ids_absent": keyless(tool_call_ids=False, completion_ids="absent"),
    }


@dataclass
class World:
    gateway: Gateway
    fakes: dict[str, FakeHttpServer]

    def last(self, fake: str) -> FakeRequest:
        return self.fakes[fake].requests[-1]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world() -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        fakes = {
            name: await stack.enter_async_context(FakeHttpServer(OpenAIFake(config).handle))
            for name, config in _fake_configs().items()
        }
        config = CONFIG.format(
            api_version=AZURE_API_VERSION,
            cap=CAP_BYTES,
            **{name: fake.url for name, fake in fakes.items()},
        )
        async with running_gateway(config, environ=KEYS) as gateway:
            yield World(gateway, fakes)


def _tool(name: str) -> content_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"text": {"type": "string"}}})
    return content_pb2.Tool(name=name, description=f"{name} tool", parameters=schema)


def _tool_wire(name: str) -> dict[str, object]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }


async def _stream(world: World, request: chat_pb2.ChatRequest) -> list[chat_pb2.StreamChatResponse]:
    return [c async for c in world.gateway.stub.StreamChat(request, timeout=10)]


async def _chat_error(world: World, request: chat_pb2.ChatRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(request, timeout=10)
    return caught.value


async def _stream_error(
    world: World, request: chat_pb2.ChatRequest
) -> tuple[list[chat_pb2.StreamChatResponse], grpc.aio.AioRpcError]:
    received: list[chat_pb2.StreamChatResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in world.gateway.stub.StreamChat(request, timeout=10):
            received.append(item)
    return received, caught.value


def _assembled(chunks: list[chat_pb2.StreamChatResponse]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) per streamed call, in index order. The first fragment of a
    call names it (id and name); later fragments carry only arguments."""
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for d in c.tool_call_deltas:
            if d.index not in calls:
                assert d.id and d.name, f"the first fragment of call {d.index} names it"
                calls[d.index] = [d.id, d.name, ""]
            else:
                assert (d.id, d.name) == ("", ""), "only the first fragment carries id and name"
            calls[d.index][2] += d.arguments_delta
    assert sorted(calls) == list(range(len(calls))), "indexes are positions from 0"
    return [(calls[i][0], calls[i][1], calls[i][2]) for i in sorted(calls)]


def _image_message(text: str) -> content_pb2.Message:
    message = user(text)
    message.parts.add(image=content_pb2.Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png"))
    message.parts.add(
        image=content_pb2.Image(url="https://example.test/cat.jpg", mime_type="image/jpeg")
    )
    return message


def _image_wire(text: str) -> list[dict[str, object]]:
    inline = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    return [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": inline}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]


SCHEMA = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
    "additionalProperties": False,
}


def _json_schema_config(strict: bool) -> chat_pb2.GenerationConfig:
    schema = struct_pb2.Struct()
    schema.update(SCHEMA)
    return chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="answer",
            json_schema=schema,
            strict=strict,
        )
    )


def _assert_azure_request(sent: FakeRequest) -> None:
    assert sent.method == "POST"
    assert sent.path == "/openai/deployments/gpt-4o-deploy/chat/completions"
    assert sent.query == {"api-version": [AZURE_API_VERSION]}
    assert sent.headers["api-key"] == "az-key"
    assert "authorization" not in sent.headers


def _assert_two_streamed_calls(chunks: list[chat_pb2.StreamChatResponse], text: str) -> None:
    """The lookup and search calls the fake streams for `text`, reassembled exactly."""
    calls = _assembled(chunks)
    assert [(call_id, name) for call_id, name, _ in calls] == [
        ("call_0_lookup", "lookup"),
        ("call_1_search", "search"),
    ]
    assert [json.loads(args) for *_, args in calls] == [
        {"text": text, "n": 0},
        {"text": text, "n": 1},
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]


# --- 1. Azure OpenAI --------------------------------------------------------------


async def test_azure_streamed_tool_calls_two_in_one_turn(world: World) -> None:
    text = "use lookup then search"
    request = chat_request(text, model="azure-gpt", tools=[_tool("lookup"), _tool("search")])
    chunks = await _stream(world, request)
    _assert_two_streamed_calls(chunks, text)
    assert not "".join(c.text_delta for c in chunks)
    # 4 prompt words; each call's arguments are 7 whitespace-separated words.
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (4, 14)
    assert chunks[0].route.upstream_request_id == "apim-ca-7"
    sent = world.last("azure")
    _assert_azure_request(sent)
    assert sent.json() == {
        "model": "gpt-4o-deploy",
        "messages": [{"role": "user", "content": text}],
        "tools": [_tool_wire("lookup"), _tool_wire("search")],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_azure_image_parts_reach_the_wire_as_image_url(world: World) -> None:
    text = "what is in these?"
    reply = await world.gateway.stub.Chat(
        chat_pb2.ChatRequest(model="azure-gpt", messages=[_image_message(text)]), timeout=10
    )
    assert [p.text for p in reply.message.parts] == [text]
    assert reply.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert reply.route.upstream_request_id == "apim-ca-7"
    sent = world.last("azure")
    _assert_azure_request(sent)
    assert sent.json() == {
        "model": "gpt-4o-deploy",
        "messages": [{"role": "user", "content": _image_wire(text)}],
    }


async def test_azure_json_schema_response_format(world: World) -> None:
    request = chat_pb2.ChatRequest(
        model="azure-gpt",
        messages=[user("give json")],
        generation_config=_json_schema_config(strict=True),
    )
    reply = await world.gateway.stub.Chat(request, timeout=10)
    assert json.loads(reply.message.parts[0].text) == {"echo": "give json"}
    sent = world.last("azure")
    _assert_azure_request(sent)
    assert sent.json() == {
        "model": "gpt-4o-deploy",
        "messages": [{"role": "user", "content": "give json"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        },
    }


# --- 2. OpenAI-compatible (vLLM-style) --------------------------------------------


async def test_compatible_streamed_tool_calls_two_in_one_turn(world: World) -> None:
    text = "lookup and search for me"
    request = chat_request(text, model="qwen-vl", tools=[_tool("lookup"), _tool("search")])
    chunks = await _stream(world, request)
    _assert_two_streamed_calls(chunks, text)
    assert chunks[0].route.upstream_request_id == "vllm-ca-1"
    sent = world.last("vllm")
    assert sent.path == "/v1/chat/completions" and sent.query == {}
    assert sent.headers["authorization"] == "Bearer vllm-key"
    assert sent.json() == {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "messages": [{"role": "user", "content": text}],
        "tools": [_tool_wire("lookup"), _tool_wire("search")],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_compatible_image_parts_with_vision_enabled(world: World) -> None:
    text = "describe"
    request = chat_pb2.ChatRequest(
        model="qwen-vl",
        messages=[_image_message(text)],
        generation_config=chat_pb2.GenerationConfig(max_output_tokens=50),
    )
    reply = await world.gateway.stub.Chat(request, timeout=10)
    assert [p.text for p in reply.message.parts] == [text]
    sent = world.last("vllm")
    assert sent.path == "/v1/chat/completions"
    assert sent.json() == {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "messages": [{"role": "user", "content": _image_wire(text)}],
        "max_tokens": 50,
    }


async def test_compatible_json_schema_response_format(world: World) -> None:
    request = chat_pb2.ChatRequest(
        model="qwen-vl",
        messages=[user("json please")],
        generation_config=_json_schema_config(strict=False),
    )
    reply = await world.gateway.stub.Chat(request, timeout=10)
    assert json.loads(reply.message.parts[0].text) == {"echo": "json please"}
    assert world.last("vllm").json() == {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "messages": [{"role": "user", "content": "json please"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA},
        },
    }


async def test_compatible_embed(world: World) -> None:
    inputs = ["alpha", "beta gamma", "δ"]
    response = await world.gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="bge", inputs=inputs), timeout=10
    )
    # The fake lists the vectors in reverse: the gateway orders them by index.
    assert [e.index for e in response.embeddings] == [0, 1, 2]
    assert [list(e.values) for e in response.embeddings] == [
        pytest.approx(embedding_vector(text, 4)) for text in inputs
    ]
    assert response.usage.input_tokens == 4
    sent = world.last("vllm")
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == "Bearer vllm-key"
    assert sent.json() == {"model": "BAAI/bge-m3", "input": inputs, "encoding_format": "float"}


# --- 3. OpenAI-compatible auth schemes ----------------------------------------------


@pytest.mark.parametrize(
    ("alias", "fake", "expected"),
    [
        pytest.param("qwen-vl", "vllm", {"authorization": "Bearer vllm-key"}, id="default"),
        pytest.param("bearer", "bearer", {"authorization": "Bearer vllm-key"}, id="bearer"),
        pytest.param("no-auth", "none", {}, id="none-with-a-key"),
        pytest.param("keyless", "keyless", {}, id="no-api-key-env"),
    ],
)
async def test_compatible_auth_headers_are_exact(
    world: World, alias: str, fake: str, expected: dict[str, str]
) -> None:
    reply = await world.gateway.stub.Chat(chat_request("auth check", model=alias), timeout=10)
    assert reply.message.parts[0].text == "auth check"
    chunks = await _stream(world, chat_request("auth stream", model=alias))
    assert "".join(c.text_delta for c in chunks) == "auth stream"
    for sent in world.fakes[fake].requests[-2:]:
        assert sent.headers["content-type"] == "application/json"
        chosen = {k: v for k, v in sent.headers.items() if k not in TRANSPORT_HEADERS}
        assert chosen == {"content-type": "application/json", **expected}


# --- 4. Vision refused before any upstream call -------------------------------------


async def test_vision_refused_before_any_upstream_call(world: World) -> None:
    fake = world.fakes["text_only"]
    before = len(fake.requests)
    for alias in ("text-default", "text-explicit"):
        request = chat_pb2.ChatRequest(model=alias, messages=[_image_message("look")])
        errors = [await _chat_error(world, request), (await _stream_error(world, request))[1]]
        for error in errors:
            details = details_of(error)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "CAPABILITY_UNSUPPORTED",
            )
            assert details.violations == {
                "messages[0].parts[1].image": f'model "{alias}" does not support image input'
            }
    assert len(fake.requests) == before, "no upstream request for a refused call"
    # The same aliases do reach this fake without the image.
    for alias in ("text-default", "text-explicit"):
        reply = await world.gateway.stub.Chat(chat_request("text only", model=alias), timeout=10)
        assert reply.message.parts[0].text == "text only"
    assert len(fake.requests) == before + 2


# --- 5. Response size cap ------------------------------------------------------------


def _completion_of(text: str) -> dict[str, object]:
    return completion({"model": "m", "messages": [{"role": "user", "content": text}]})


async def test_unary_body_over_max_response_bytes(world: World) -> None:
    fits, too_big = "f" * (CAP_BYTES - 600), "x" * (CAP_BYTES + 100)
    assert len(json.dumps(_completion_of(fits))) < CAP_BYTES
    world.fakes["capped"].script(FakeResponse.json(_completion_of(fits)))
    reply = await world.gateway.stub.Chat(chat_request(model="capped"), timeout=10)
    assert reply.message.parts[0].text == fits
    for response in (
        FakeResponse.json(_completion_of(too_big)),
        # Without Content-Length: the cap counts what arrives.
        stream_response(json.dumps(_completion_of(too_big)).encode(), piece=256),
    ):
        response.headers["content-type"] = "application/json"
        world.fakes["capped"].script(response)
        details = details_of(await _chat_error(world, chat_request(model="capped")))
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_RESPONSE_TOO_LARGE",
        )
        assert details.error_info.metadata["provider"] == "capped"
        assert too_big not in details.message


def _small_events_stream(words: int) -> bytes:
    events: list[dict[str, object] | str] = [chunk("m", {"role": "assistant", "content": ""})]
    events += [chunk("m", {"content": f" w{i:03d}"}) for i in range(words)]
    events += [chunk("m", {}, "stop"), "[DONE]"]
    return sse_body(events)


async def test_stream_under_max_response_bytes_in_total_is_ok(world: World) -> None:
    body = _small_events_stream(4)
    assert len(body) < CAP_BYTES
    world.fakes["capped"].script(stream_response(body, piece=64))
    chunks = await _stream(world, chat_request(model="capped"))
    assert "".join(c.text_delta for c in chunks) == " w000 w001 w002 w003"


async def test_stream_over_max_response_bytes_in_total(world: World) -> None:
    body = _small_events_stream(40)
    assert len(body) > 2 * CAP_BYTES
    assert all(len(event) < 300 for event in body.split(b"\n\n")), "every event is small"
    world.fakes["capped"].script(stream_response(body, piece=64))
    received, error = await _stream_error(world, chat_request(model="capped"))
    details = details_of(error)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_RESPONSE_TOO_LARGE",
    )
    assert details.error_info.metadata["provider"] == "capped"
    assert details.error_info.metadata["partialOutput"] == "true"
    assert int(details.error_info.metadata["chunksDelivered"]) == len(received) > 0
    full = "".join(f" w{i:03d}" for i in range(40))
    delivered = "".join(c.text_delta for c in received)
    assert full.startswith(delivered) and len(delivered) < len(full)
    assert not any(c.finish_reason for c in received), "never a clean finish"


async def test_stream_event_over_max_response_bytes_fails(world: World) -> None:
    events: list[dict[str, object] | str] = [
        chunk("m", {"content": "y" * (CAP_BYTES + 100)}),
        chunk("m", {}, "stop"),
        "[DONE]",
    ]
    world.fakes["capped"].script(stream_response(sse_body(events), piece=512))
    received, error = await _stream_error(world, chat_request(model="capped"))
    details = details_of(error)
    assert details.code == grpc.StatusCode.INTERNAL
    # Today an oversized event is reported as a framing (protocol) error.
    assert details.error_info.reason in ("UPSTREAM_RESPONSE_TOO_LARGE", "UPSTREAM_PROTOCOL_ERROR")
    assert not any(c.text_delta for c in received)


# --- 6. Servers that omit tool_calls[].id --------------------------------------------

# How the server identifies its completions: a new id each time, one constant id, none.
# Ids the gateway makes for calls that come without one must never repeat in any case.
ID_ALIASES = [
    pytest.param("ids-unique", id="unique-completion-ids"),
    pytest.param("ids-fixed", id="constant-completion-id"),
    pytest.param("ids-absent", id="no-completion-id"),
]


def _no_ids_request(alias: str) -> chat_pb2.ChatRequest:
    return chat_request("lookup and search", model=alias, tools=[_tool("lookup"), _tool("search")])


@pytest.mark.parametrize("alias", ID_ALIASES)
async def test_unary_tool_calls_without_ids_get_unique_ids(world: World, alias: str) -> None:
    ids: list[str] = []
    for _ in range(2):
        reply = await world.gateway.stub.Chat(_no_ids_request(alias), timeout=10)
        calls = [p.tool_call for p in reply.message.parts]
        assert [(c.name, json.loads(c.arguments)["n"]) for c in calls] == [
            ("lookup", 0),
            ("search", 1),
        ]
        assert all(c.id for c in calls)
        ids += [c.id for c in calls]
    assert len(set(ids)) == 4, f"ids repeat across or within calls: {ids}"


@pytest.mark.parametrize("alias", ID_ALIASES)
async def test_streamed_tool_calls_without_ids_get_unique_ids(world: World, alias: str) -> None:
    ids: list[str] = []
    for _ in range(2):
        chunks = await _stream(world, _no_ids_request(alias))
        calls = _assembled(chunks)
        assert [(name, json.loads(args)["n"]) for _, name, args in calls] == [
            ("lookup", 0),
            ("search", 1),
        ]
        ids += [call_id for call_id, _, _ in calls]
    assert all(ids) and len(set(ids)) == 4, f"ids repeat across or within calls: {ids}"
