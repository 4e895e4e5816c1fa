"""Revocation and token types through the running gateway, with a real JWKS server on
loopback: a remembered token is refused on its next call once a JWKS refresh drops (or
changes) its key, and an issuer with `required_typ` takes only tokens of that type."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import models_pb2

from service.auth.jwks import JwksCache
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import KeyPair, claims, ec_pair, sign
from tests.support import Gateway, chat_request, running_gateway

K1 = ec_pair("k1")
K2 = ec_pair("k2")
K1_REPLACED = ec_pair("k1")  # another key published under the same kid
AS_KEY = ec_pair("as-1")
IDP = "https://idp.example/"
AS = "https://as.example/"
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
audit: {{path: "{audit}"}}
auth:
  issuers:
    - issuer: {idp}
      audiences: [llm-gateway]
      algorithms: [ES256]
      jwks_url: "{jwks}"
      jwks_refresh: 0.2s
      jwks_min_refetch: 3600s
    - issuer: {as_}
      audiences: [llm-gateway]
      algorithms: [ES256]
      public_keys: [{{kid: as-1, pem_file: "{pem}"}}]
      required_typ: at+jwt
providers:
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: mock, provider: mock}}
"""


@dataclass
class World:
    gateway: Gateway
    jwks_server: FakeHttpServer
    published: list[KeyPair]
    audit: Path

    @property
    def jwks(self) -> JwksCache:
        verifier = self.gateway.server.verifier
        assert verifier is not None
        cache = verifier._issuers[IDP].jwks
        assert cache is not None
        return cache

    @property
    def cache_hits(self) -> int:
        assert self.gateway.server.verifier is not None
        return self.gateway.server.verifier.cache_hits

    async def publish(self, *keys: KeyPair) -> None:
        """Publishes `keys` and returns once a fetch that began afterwards has ended.

        Fetches run one at a time (under the cache's lock): when the second fetch
        counted from now has begun, the first one, which began after the change, is
        over."""
        self.published[:] = keys
        target = self.jwks.fetches + 2
        for _ in range(500):
            if self.jwks.fetches >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the JWKS was not refreshed")

    async def reason(self, request_id: str) -> str:
        """The audit reason of the call `request_id`, once its record is written."""
        for _ in range(500):
            lines = self.audit.read_text().splitlines() if self.audit.exists() else []
            for line in lines:
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return str(record["reason"])
            await asyncio.sleep(0.01)
        raise AssertionError(f"no audit record for {request_id}")


@pytest_asyncio.fixture(loop_scope="session")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    published = [K1, K2]

    def jwks(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json({"keys": [k.jwk() for k in published]})

    pem = tmp_path / "as.pem"
    pem.write_bytes(AS_KEY.public_pem)
    audit = tmp_path / "audit.jsonl"
    async with FakeHttpServer(jwks) as server:
        config = CONFIG.format(audit=audit, jwks=f"{server.url}/jwks", pem=pem, idp=IDP, as_=AS)
        async with running_gateway(config) as gateway:
            yield World(gateway, server, published, audit)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def idp_token(key: KeyPair, **headers: Any) -> str:
    return sign(claims(IDP), key.private, "ES256", kid=key.kid, **headers)


def as_token(**headers: Any) -> str:
    return sign(claims(AS), AS_KEY.private, "ES256", kid=AS_KEY.kid, **headers)


_ids = itertools.count()


async def _call(world: World, token: str) -> tuple[bool, str]:
    """Whether a Chat with `token` is served, and its request id."""
    request_id = f"revocation-{next(_ids)}"
    metadata = (*bearer(token), ("x-request-id", request_id))
    try:
        await world.gateway.stub.Chat(chat_request(), metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
        return False, request_id
    return True, request_id


async def served(world: World, token: str) -> bool:
    return (await _call(world, token))[0]


async def refusal(world: World, token: str) -> str:
    """The audit reason of a Chat with `token`, which must be refused."""
    ok, request_id = await _call(world, token)
    assert not ok, "served"
    return await world.reason(request_id)


async def upstream_requests(world: World) -> int:
    stats = await world.gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(), metadata=bearer(idp_token(K2)), timeout=5
    )
    return sum(p.requests for p in stats.providers)


async def test_a_remembered_token_is_refused_once_its_key_leaves_the_jwks(world: World) -> None:
    token = idp_token(K1)
    assert await served(world, token)
    hits = world.cache_hits
    assert await served(world, token)
    assert world.cache_hits == hits + 1, "the token is remembered"
    await world.publish(K1, K2)  # refreshed, the key unchanged: still remembered
    assert await served(world, token)
    assert world.cache_hits == hits + 2
    await world.publish(K2)  # k1 is rotated out
    before = await upstream_requests(world)
    assert await refusal(world, token) == "unknown kid", "refused on the next call"
    assert await upstream_requests(world) == before
    assert await served(world, idp_token(K2)), "tokens of the keys still published are served"


async def test_a_key_replaced_under_its_kid_ends_its_tokens(world: World) -> None:
    token = idp_token(K1)
    assert await served(world, token)
    assert await served(world, token)
    await world.publish(K1_REPLACED, K2)
    assert await refusal(world, token) == "bad signature"
    assert await served(world, idp_token(K1_REPLACED))


@pytest.mark.parametrize(
    ("typ", "accepted"),
    [
        ("at+jwt", True),
        ("application/at+jwt", True),
        ("AT+JWT", True),
        ("JWT", False),
        ("jwt", False),
        ("id_token+jwt", False),
        ("", False),
    ],
)
async def test_an_issuer_that_requires_a_typ_takes_only_that_type(
    world: World, typ: str, accepted: bool
) -> None:
    # PyJWT writes typ "JWT" unless told otherwise; `typ=None` leaves it out.
    token = as_token(typ=typ or None)
    if accepted:
        assert await served(world, token)
    else:
        reason = await refusal(world, token)
        assert reason.startswith("token typ ") and "is not the required 'at+jwt'" in reason


async def test_issuers_without_a_required_typ_take_any(world: World) -> None:
    assert await served(world, idp_token(K2, typ="JWT"))
    assert await served(world, idp_token(K2, typ=None))
