"""What the gateway reports of the upstream: its request id on routes (the header's,
else the response body's own id `chatcmpl-…`, on whole answers and on the first and the
final chunk of a stream), and the provider's own explanation when it refused a request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from tests.fakes.http_server import FakeHttpServer, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, error_body
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: headed, api_key_env: IDS_TEST_KEY, base_url: '{headed}/v1', openai: {{}}}}
  - {{name: bare, api_key_env: IDS_TEST_KEY, base_url: '{bare}/v1', openai: {{}}}}
models:
  - {{alias: headed, provider: headed, upstream_model: gpt-4o-mini}}
  - {{alias: bare, provider: bare, upstream_model: gpt-4o-mini}}
"""


@dataclass
class World:
    gateway: Gateway
    headed: FakeHttpServer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world() -> AsyncIterator[World]:
    headed = OpenAIFake(OpenAIFakeConfig(key="sk-ids", request_id="req_header_1"))
    # No request id header (an empty value): the body's completion id must stand in.
    bare = OpenAIFake(OpenAIFakeConfig(key="sk-ids", request_id=""))
    async with (
        FakeHttpServer(headed.handle) as headed_server,
        FakeHttpServer(bare.handle) as bare_server,
    ):
        config = CONFIG.format(headed=headed_server.url, bare=bare_server.url)
        async with running_gateway(config, environ={"IDS_TEST_KEY": "sk-ids"}) as gateway:
            yield World(gateway, headed_server)


async def test_the_final_chunk_names_the_upstream_request_as_the_first_does(world: World) -> None:
    chunks = [
        c
        async for c in world.gateway.stub.StreamChat(
            chat_request("a b", model="headed"), timeout=10
        )
    ]
    assert len(chunks) >= 2
    assert chunks[0].route.upstream_request_id == "req_header_1"
    assert chunks[-1].HasField("usage")
    assert chunks[-1].route.upstream_request_id == "req_header_1"


async def test_the_body_id_stands_in_for_a_missing_header(world: World) -> None:
    reply = await world.gateway.stub.Chat(chat_request("a b", model="bare"), timeout=10)
    assert reply.route.upstream_request_id == "chatcmpl-fake"
    chunks = [
        c
        async for c in world.gateway.stub.StreamChat(chat_request("a b", model="bare"), timeout=10)
    ]
    assert chunks[0].route.upstream_request_id == "chatcmpl-fake"
    assert chunks[-1].route.upstream_request_id == "chatcmpl-fake"


async def test_the_providers_explanation_reaches_the_caller_sanitized(world: World) -> None:
    message = "Invalid 'max_completion_tokens': must be at most 16384 (key sk-abcdefghijklmnop)."
    world.headed.script(
        FakeResponse.json(
            error_body(message, "invalid_request_error", "invalid_value", "max_completion_tokens"),
            400,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request("a", model="headed"), timeout=10)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    said = details.error_info.metadata["upstreamMessage"]
    assert said.startswith("Invalid 'max_completion_tokens': must be at most 16384")
    assert "sk-abcdefghijklmnop" not in said and "[redacted]" in said
    assert details.error_info.metadata["upstreamParam"] == "max_completion_tokens"
    assert details.error_info.metadata["upstreamType"] == "invalid_request_error"
    assert details.message.endswith(said)


async def test_a_refused_gateway_key_says_nothing_of_the_providers_words(world: World) -> None:
    world.headed.script(
        FakeResponse.json(
            error_body("Incorrect API key provided: sk-ids****ids.", "invalid_request_error"),
            401,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request("a", model="headed"), timeout=10)
    details = details_of(caught.value)
    assert details.error_info.reason == "UPSTREAM_AUTH_FAILED"
    assert "upstreamMessage" not in details.error_info.metadata
    assert "Incorrect API key" not in details.message
