"""Gemini on Vertex AI through the running gateway: a service account's key file named by
an environment variable, access tokens from a loopback Google token endpoint by the JWT
bearer grant (fetched once, renewed before expiry, dropped when refused), and a
Vertex-shaped fake serving chat, streams, token counts and embeddings at Vertex URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.providers.google_auth import ServiceAccountTokenSource
from tests.fakes.vertex_fake import GoogleTokenEndpoint, ServiceAccountKey, VertexFake
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - name: vertex
    base_url: "{vertex}"
    vertex_ai: {{project: test-project, location: us-central1, credentials_file_env: VERTEX_TEST_KEY_FILE}}
models:
  - {{alias: gemini, provider: vertex, upstream_model: gemini-2.5-flash}}
  - {{alias: embed, provider: vertex, upstream_model: text-embedding-005, capabilities: {{embeddings: true}}}}
"""
BASE = "/v1/projects/test-project/locations/us-central1/publishers/google/models"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    gateway: Gateway
    google: GoogleTokenEndpoint
    vertex: VertexFake
    tokens: ServiceAccountTokenSource
    clock: Clock

    def bearers(self) -> list[str]:
        return [r.headers.get("authorization", "") for r in self.vertex.requests]


@pytest_asyncio.fixture(loop_scope="session")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    account = ServiceAccountKey()
    google = GoogleTokenEndpoint(account)
    async with google, VertexFake(google) as vertex:
        key_file = tmp_path / "key.json"
        key_file.write_text(account.key_file(google.token_uri))
        config = CONFIG.format(vertex=vertex.url)
        async with running_gateway(config, {"VERTEX_TEST_KEY_FILE": str(key_file)}) as gateway:
            tokens = gateway.server.registry.providers["vertex"].tokens  # type: ignore[attr-defined]
            clock = Clock()
            tokens._clock = clock
            yield World(gateway, google, vertex, tokens, clock)


async def test_chat_at_the_vertex_url_with_a_granted_token(world: World) -> None:
    request = chat_pb2.ChatRequest(
        model="gemini",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Brief.")]
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hello vertex")]
            ),
        ],
        generation_config=chat_pb2.GenerationConfig(temperature=0.2),
    )
    reply = await world.gateway.stub.Chat(request, timeout=10)
    assert reply.message.parts[-1].text == "hello vertex"
    assert reply.usage.input_tokens == 3
    assert reply.route.provider == "vertex" and reply.route.upstream_request_id == "fake-1"
    [sent] = world.vertex.requests
    assert sent.path == f"{BASE}/gemini-2.5-flash:generateContent"
    assert sent.headers["authorization"] == "Bearer ya29.fake-1"
    assert "x-goog-api-key" not in sent.headers
    assert sent.json() == {
        "systemInstruction": {"parts": [{"text": "Brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}],
        "generationConfig": {"temperature": 0.2},
    }


async def test_stream_count_and_embed(world: World) -> None:
    chunks = [
        c
        async for c in world.gateway.stub.StreamChat(
            chat_request("one two three", model="gemini"), timeout=10
        )
    ]
    assert "".join(c.text_delta for c in chunks) == "one two three"
    assert chunks[-1].usage.input_tokens == 3
    assert (
        world.vertex.requests[-1].target == f"{BASE}/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    counted = await world.gateway.stub.CountTokens(
        chat_request("one two three", model="gemini"), timeout=10
    )
    assert counted.input_tokens == 3 and not counted.estimated
    assert world.vertex.requests[-1].path == f"{BASE}/gemini-2.5-flash:countTokens"
    assert world.vertex.requests[-1].json() == {
        "contents": [{"role": "user", "parts": [{"text": "one two three"}]}]
    }
    embedded = await world.gateway.stub.Embed(
        embed_pb2.EmbedRequest(model="embed", inputs=["a b", "c"], dimensions=4), timeout=10
    )
    assert [len(e.values) for e in embedded.embeddings] == [4, 4]
    assert embedded.usage.input_tokens == 3
    assert world.vertex.requests[-1].path == f"{BASE}/text-embedding-005:predict"
    assert world.vertex.requests[-1].json() == {
        "instances": [{"content": "a b"}, {"content": "c"}],
        "parameters": {"outputDimensionality": 4},
    }
    assert world.google.issued == ["ya29.fake-1"] and world.tokens.fetches == 1


async def test_the_token_is_renewed_before_it_expires(world: World) -> None:
    await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    world.clock.now += 3599 - 301  # more than five minutes left: still used
    await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    assert world.tokens.fetches == 1
    world.clock.now += 2  # less than five minutes left: renewed in the background
    await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    assert world.bearers()[-1] == "Bearer ya29.fake-1", "the still-valid token serves meanwhile"
    assert await world.vertex.wait_for(lambda: len(world.google.issued) == 2)
    await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    assert world.bearers()[-1] == "Bearer ya29.fake-2" and world.tokens.fetches == 2


async def test_a_revoked_token_is_dropped_and_the_next_call_gets_a_new_one(world: World) -> None:
    await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    world.vertex.revoked.add("ya29.fake-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    assert details_of(caught.value).error_info.reason == "UPSTREAM_AUTH_FAILED"
    reply = await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    assert reply.message.parts[-1].text == "hi"
    assert world.bearers()[-1] == "Bearer ya29.fake-2"


async def test_a_refused_assertion_is_the_gateways_own_auth_failure(world: World) -> None:
    world.google.refuse = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request("hi", model="gemini"), timeout=10)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INTERNAL
    assert details.error_info.reason == "UPSTREAM_AUTH_FAILED"
    assert "Google OAuth" in details.message
    assert world.vertex.requests == []
