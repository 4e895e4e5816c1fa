"""Azure OpenAI with Microsoft Entra ID client credentials, against a token endpoint and
an Azure fake on loopback: tokens fetched once and reused, renewed before they expire
with one fetch however many calls are waiting, dropped when the upstream rejects them,
kept through a failed renewal while still valid; a refused or unreachable identity
provider gives a precise status and no upstream call; the secret is never logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import grpc
import pytest

from service.providers.entra import EntraTokenSource
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, details_of, running_gateway

TENANT = "tenant-0f1e"
CLIENT_ID = "client-7a2b"
SECRET = "entra-client-secret-93d1c7"
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 2, initial_backoff: 0.01s, max_backoff: 0.02s}}, breaker: {{disabled: true}}}}
providers:
  - name: azure
    api_key_env: ENTRA_SECRET
    base_url: {azure}
    azure_openai:
      entra_client_credentials: {{tenant_id: {tenant}, client_id: {client}, authority: "{authority}"}}
models:
  - {{alias: gpt, provider: azure, upstream_model: gpt-4o-deploy}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Identity:
    """The token endpoint: issues tok-1, tok-2, ... for the right client credentials."""

    expires_in: int = 3600
    status: int = 200
    delay: float = 0.0
    issued: list[str] = field(default_factory=list)
    forms: list[dict[str, list[str]]] = field(default_factory=list)

    async def handle(self, request: FakeRequest) -> FakeResponse:
        if request.path != f"/{TENANT}/oauth2/v2.0/token" or request.method != "POST":
            return FakeResponse.raw(b"not found", status=404)
        self.forms.append(parse_qs(request.body.decode()))
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return FakeResponse.json({"error": "invalid_client"}, status=self.status)
        self.issued.append(f"tok-{len(self.issued) + 1}")
        return FakeResponse.json(
            {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": self.issued[-1]}
        )


@dataclass
class World:
    gateway: Gateway
    identity: Identity
    azure: FakeHttpServer
    revoked: set[str]
    clock: Clock
    tokens: EntraTokenSource

    def bearers(self) -> list[str]:
        return [r.headers.get("authorization", "") for r in self.azure.requests]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    identity = Identity()
    fake = OpenAIFake(OpenAIFakeConfig(auth="none"))
    revoked: set[str] = set()

    def azure(request: FakeRequest) -> FakeResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in identity.issued or token in revoked or "api-key" in request.headers:
            return FakeResponse.json({"error": {"code": "401", "message": "bad token"}}, 401)
        checked = {k: v for k, v in request.headers.items() if k != "authorization"}
        return fake.handle(FakeRequest(request.method, request.target, checked, request.body))

    async with FakeHttpServer(identity.handle) as idp, FakeHttpServer(azure) as upstream:
        config = CONFIG.format(
            azure=upstream.url, tenant=TENANT, client=CLIENT_ID, authority=idp.url
        )
        async with running_gateway(config, {"ENTRA_SECRET": SECRET}) as gateway:
            tokens = gateway.server.registry.providers["azure"].tokens  # type: ignore[attr-defined]
            clock = Clock()
            tokens._clock = clock
            yield World(gateway, identity, upstream, revoked, clock, tokens)


async def chat(world: World) -> str:
    reply = await world.gateway.stub.Chat(chat_request("hi", model="gpt"), timeout=5)
    return reply.message.parts[0].text


async def test_a_token_is_fetched_once_and_renewed_before_it_expires(world: World) -> None:
    assert await chat(world) == "hi"
    assert await chat(world) == "hi"
    assert world.identity.issued == ["tok-1"] and world.tokens.fetches == 1
    assert world.bearers() == ["Bearer tok-1", "Bearer tok-1"]
    form = world.identity.forms[0]
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [SECRET],
        "scope": ["https://cognitiveservices.azure.com/.default"],
    }
    world.clock.now += 3600 - 301  # more than five minutes left: still used
    await chat(world)
    assert world.tokens.fetches == 1
    world.clock.now += 2  # less than five minutes left: renewed in the background
    await chat(world)
    assert world.bearers()[-1] == "Bearer tok-1", "the still-valid token serves meanwhile"
    assert await world.azure.wait_for(lambda: world.identity.issued == ["tok-1", "tok-2"])
    await chat(world)
    assert world.bearers()[-1] == "Bearer tok-2" and world.tokens.fetches == 2


async def test_calls_waiting_for_a_renewal_share_one_fetch(world: World) -> None:
    await chat(world)
    world.identity.delay = 0.3
    world.clock.now += 3600  # expired: every call must wait for the new token
    impatient = world.gateway.stub.Chat(chat_request("hi", model="gpt"), timeout=0.1)
    answers = await asyncio.gather(*(chat(world) for _ in range(5)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await impatient
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answers == ["hi"] * 5
    assert world.tokens.fetches == 2, "one fetch, not stopped by the caller that gave up"
    assert world.bearers()[-5:] == ["Bearer tok-2"] * 5


async def test_a_failed_fetch_is_not_repeated_by_every_waiting_call(world: World) -> None:
    world.identity.status = 401
    world.identity.delay = 0.1
    results = await asyncio.gather(*(chat(world) for _ in range(10)), return_exceptions=True)
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INTERNAL
        for r in results
    )
    assert world.tokens.fetches == 1
    world.identity.status = 200
    world.clock.now += 3  # the failure is remembered only for a moment
    assert await chat(world) == "hi"
    assert world.tokens.fetches == 2


async def test_a_rejected_token_is_dropped_and_the_next_call_fetches_anew(world: World) -> None:
    await chat(world)
    world.revoked.add("tok-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat(world)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
    )
    assert await chat(world) == "hi"
    assert world.bearers()[-1] == "Bearer tok-2"


async def test_a_failed_renewal_keeps_the_still_valid_token(world: World) -> None:
    await chat(world)
    world.identity.status = 503
    world.clock.now += 3600 - 100  # due for renewal, not yet expired
    assert await chat(world) == "hi"
    assert world.bearers()[-1] == "Bearer tok-1"
    assert world.tokens.fetches == 2
    assert await chat(world) == "hi"
    assert world.tokens.fetches == 2, "the next renewal waits a little, not every call"


async def test_refused_and_unreachable_identity_provider(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.identity.status = 401
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat(world)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
    )
    assert world.tokens.fetches == 1, "the gateway's own credentials are not retried"
    world.identity.status = 503
    world.clock.now += 3  # past the moment a failure is remembered
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat(world)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_AUTH_UNAVAILABLE",
    )
    assert details.error_info.metadata["attempts"] == "2", "retried as transient"
    assert world.tokens.fetches == 2, "the retry got the remembered failure, not a new fetch"
    assert world.azure.requests == [], "no upstream call without a token"
    assert all(SECRET not in r.getMessage() + str(r.__dict__) for r in caplog.records)


@pytest.mark.parametrize(
    ("credentials", "path", "problem"),
    [
        ("{client_id: c}", "entra_client_credentials.tenant_id", "is required"),
        ("{tenant_id: t}", "entra_client_credentials.client_id", "is required"),
        (
            "{tenant_id: t, client_id: c, authority: ftp.example}",
            "entra_client_credentials.authority",
            "https URL",
        ),
        (
            "{tenant_id: t, client_id: c, authority: 'http://login.example'}",
            "entra_client_credentials.authority",
            "https URL",
        ),
    ],
)
def test_entra_settings_are_validated(credentials: str, path: str, problem: str) -> None:
    from service.config import ConfigError, parse_config

    text = (
        "auth: {disabled: true}\nproviders:\n  - name: azure\n    api_key_env: S\n"
        "    base_url: http://127.0.0.1:9\n"
        f"    azure_openai: {{entra_client_credentials: {credentials}}}\n"
        "models:\n  - {alias: gpt, provider: azure}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {"S": "secret"})
    assert caught.value.path == f"providers[0].azure_openai.{path}"
    assert problem in caught.value.problem
    both = text.replace(
        "entra_client_credentials: {tenant_id: t",
        "entra_token: true, entra_client_credentials: {tenant_id: t",
    )
    if both != text:
        with pytest.raises(ConfigError) as caught:
            parse_config(both, {"S": "secret"})
        assert "either entra_token or entra_client_credentials" in caught.value.problem


async def test_a_late_rejection_of_an_old_token_keeps_the_new_one(world: World) -> None:
    await chat(world)
    world.clock.now += 3600  # expired: the next call fetches tok-2
    await chat(world)
    assert world.bearers()[-1] == "Bearer tok-2"
    world.tokens.invalidate({"authorization": "Bearer tok-1"})  # a slow request's 401
    await chat(world)
    assert world.bearers()[-1] == "Bearer tok-2" and world.tokens.fetches == 2
    world.tokens.invalidate({"authorization": "Bearer tok-2"})
    await chat(world)
    assert world.bearers()[-1] == "Bearer tok-3" and world.tokens.fetches == 3
