"""Authentication and authorization through the running gateway: refused calls get the
right code with no upstream call and a denied audit record; allowed calls are served."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmgateway.v1 import embed_pb2, models_pb2

from tests.fakes.keys import HS_SECRET, claims, forge, hs256_with_public_key, rsa_pair, sign
from tests.support import Gateway, chat_request, details_of, running_gateway

RSA = rsa_pair("rsa-1")
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
audit: {{path: "{audit}"}}
auth:
  reflection_open: {reflection_open}
  exempt_methods: ["/llmgateway.v1.ProviderService/ListModels"]
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
    - issuer: corp
      audiences: [llm-gateway]
      algorithms: [RS256]
      public_keys: [{{kid: rsa-1, pem_file: "{pem}"}}]
  authorization:
    tenant_models: {{acme: {{patterns: ["mock", "mock-*"]}}}}
allow_direct_model_addressing: true
providers:
  - {{name: mock, mock: {{faults_from_metadata: true}}}}
  - {{name: vault, mock: {{script: ["secret answer"]}}}}
  - {{name: mock-premium, mock: {{script: ["premium answer"]}}}}
models:
  - {{alias: mock, provider: mock, fallbacks: [vault-model]}}
  - {{alias: mock-embed, provider: mock, capabilities: {{embeddings: true}}}}
  - {{alias: vault-model, provider: vault}}
"""


@dataclass
class World:
    gateway: Gateway
    audit: Path

    def records(self) -> list[dict[str, Any]]:
        """The records written so far: complete lines only (a write may be under way)."""
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().split("\n")[:-1] if line]

    async def upstream_requests(self) -> int:
        stats = await self.gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(), metadata=bearer(token()), timeout=5
        )
        return sum(p.requests for p in stats.providers)


def token(**overrides: Any) -> str:
    return sign(claims("dev", **overrides), HS_SECRET, "HS256")


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


async def _world(tmp_path: Path, reflection_open: bool = True) -> AsyncIterator[World]:
    pem = tmp_path / "corp.pem"
    pem.write_bytes(RSA.public_pem)
    audit = tmp_path / "audit.jsonl"
    config = CONFIG.format(audit=audit, pem=pem, reflection_open=str(reflection_open).lower())
    async with running_gateway(config, environ={"GW_SECRET": HS_SECRET}) as gateway:
        yield World(gateway, audit)


@pytest_asyncio.fixture(loop_scope="session")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in _world(tmp_path):
        yield w


def request_id() -> str:
    return uuid.uuid4().hex


def tagged(request: str, metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The metadata with an `x-request-id`, so that the call's own audit record is found."""
    return (("x-request-id", request), *metadata)


async def _audited(world: World, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The audit records of exactly these calls, by request id, once every one of them
    reached the file (the sink writes in the background). Bounded: 1000 polls of 10 ms."""
    wanted = set(request_ids)
    found: dict[str, dict[str, Any]] = {}
    for _ in range(1000):
        found = {r["request_id"]: r for r in world.records() if r["request_id"] in wanted}
        if len(found) == len(wanted):
            break
        await asyncio.sleep(0.01)
    assert set(found) == wanted, f"audit records missing for {sorted(wanted - set(found))}"
    return found


OTHER_RSA = rsa_pair("rsa-1")  # same kid, another key


def _flip(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B").join([signature[:5], signature[6:]])
    return f"{head}.{payload}.{flipped}"


def _as_bearer(make: Callable[[], str]) -> Callable[[], tuple[tuple[str, str], ...]]:
    return lambda: bearer(make())


# kind → the metadata a hostile caller sends.
HOSTILE: dict[str, Callable[[], tuple[tuple[str, str], ...]]] = {
    **{
        f"alg {spelling}": _as_bearer(
            lambda spelling=spelling: forge({"alg": spelling}, claims("dev"))
        )
        for spelling in ("none", "None", "NONE", "nOnE")
    },
    "key confusion": _as_bearer(
        lambda: hs256_with_public_key(claims("corp"), RSA.public_pem, "rsa-1")
    ),
    "algorithm outside the list": _as_bearer(lambda: sign(claims("dev"), HS_SECRET * 2, "HS512")),
    "wrong secret": _as_bearer(lambda: sign(claims("dev"), HS_SECRET + "x", "HS256")),
    "bit-flipped signature": _as_bearer(lambda: _flip(token())),
    "truncated signature": _as_bearer(lambda: token()[:-10]),
    "another key, same kid": _as_bearer(
        lambda: sign(claims("corp"), OTHER_RSA.private, "RS256", kid="rsa-1")
    ),
    "expired": _as_bearer(lambda: token(exp=1)),
    "expired past the leeway": _as_bearer(lambda: token(exp=int(time.time()) - 40)),
    "not yet valid": _as_bearer(lambda: token(nbf=int(time.time()) + 40)),
    "no exp": _as_bearer(lambda: token(exp=None)),
    "no sub": _as_bearer(lambda: token(sub=None)),
    "no aud": _as_bearer(lambda: token(aud=None)),
    "no iss": _as_bearer(
        lambda: sign({k: v for k, v in claims("dev").items() if k != "iss"}, HS_SECRET, "HS256")
    ),
    "wrong audience": _as_bearer(lambda: token(aud="another-service")),
    "prefix issuer": _as_bearer(lambda: sign(claims("dev-evil"), HS_SECRET, "HS256")),
    "unknown kid": _as_bearer(lambda: sign(claims("corp"), RSA.private, "RS256", kid="rsa-404")),
    "injected kid": _as_bearer(
        lambda: sign(claims("corp"), RSA.private, "RS256", kid="../../etc/passwd")
    ),
    "jku": _as_bearer(
        lambda: sign(claims("dev"), HS_SECRET, "HS256", jku="https://evil.example/jwks")
    ),
    "x5u": _as_bearer(
        lambda: sign(claims("dev"), HS_SECRET, "HS256", x5u="https://evil.example/cert")
    ),
    "unknown crit": _as_bearer(lambda: sign(claims("dev"), HS_SECRET, "HS256", crit=["exp-ext"])),
    "oversized": _as_bearer(lambda: token(pad="x" * 9000)),
    "duplicate authorization": lambda: (*bearer(token()), *bearer(token())),
    "empty": lambda: (("authorization", ""),),
    "basic scheme": lambda: (("authorization", f"Basic {token()}"),),
    "bearer without token": lambda: (("authorization", "Bearer "),),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_tokens_are_unauthenticated_without_upstream_calls(
    world: World, kind: str
) -> None:
    before = await world.upstream_requests()
    metadata = HOSTILE[kind]()
    unary, streamed_id = request_id(), request_id()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(), metadata=tagged(unary, metadata), timeout=5)
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
    )
    assert "expired" not in details.message and "signature" not in details.message, (
        "generic message"
    )
    trailing = caught.value.trailing_metadata() or ()
    assert [v for k, v in trailing if k == "x-request-id"] == [unary], "the id, once"
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in world.gateway.stub.StreamChat(
            chat_request(), metadata=tagged(streamed_id, metadata), timeout=5
        ):
            pass
    assert details_of(streamed.value).code == grpc.StatusCode.UNAUTHENTICATED
    assert await world.upstream_requests() == before
    denied = (await _audited(world, unary, streamed_id)).values()
    assert all(r["status"] == "UNAUTHENTICATED" and r["reason"] for r in denied), denied
    sent = [value for _, value in metadata if len(value) > 20]
    assert all(value not in json.dumps(r) for r in world.records() for value in sent)


async def test_missing_token_and_the_audit_reason(world: World) -> None:
    call = request_id()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Embed(
            embed_pb2.EmbedRequest(model="mock-embed", inputs=["x"]),
            metadata=tagged(call, ()),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    record = (await _audited(world, call))[call]
    assert record["status"] == "UNAUTHENTICATED"
    assert record["reason"] == "no authorization metadata"
    assert record["method"] == "/llmgateway.v1.ProviderService/Embed"


async def test_valid_tokens_are_served_and_audited_with_the_identity(world: World) -> None:
    unary, streamed = request_id(), request_id()
    reply = await world.gateway.stub.Chat(
        chat_request("hello"), metadata=tagged(unary, bearer(token(tenant="acme"))), timeout=5
    )
    assert reply.message.parts[0].text == "hello"
    corp = sign(claims("corp", sub="bob"), RSA.private, "RS256", kid="rsa-1")
    chunks = [
        c
        async for c in world.gateway.stub.StreamChat(
            chat_request("a b"), metadata=tagged(streamed, bearer(corp)), timeout=5
        )
    ]
    assert "".join(c.text_delta for c in chunks) == "a b"
    records = await _audited(world, unary, streamed)
    assert [
        (records[i]["method"].rsplit("/", 1)[1], records[i]["status"]) for i in (unary, streamed)
    ] == [("Chat", "OK"), ("StreamChat", "OK")]
    assert [(records[i]["subject"], records[i]["tenant"]) for i in (unary, streamed)] == [
        ("alice", "acme"),
        ("bob", ""),
    ]


async def test_missing_scope_is_permission_denied_before_any_upstream_call(world: World) -> None:
    before = await world.upstream_requests()
    chat, stats_call = request_id(), request_id()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_request(), metadata=tagged(chat, bearer(token(scope="embed"))), timeout=5
        )
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "METHOD_NOT_ALLOWED",
    )
    with pytest.raises(grpc.aio.AioRpcError) as stats:
        await world.gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(),
            metadata=tagged(stats_call, bearer(token(scope="chat"))),
            timeout=5,
        )
    assert stats.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await world.upstream_requests() == before
    records = await _audited(world, chat, stats_call)
    assert [(records[i]["status"], records[i]["reason"]) for i in (chat, stats_call)] == [
        ("PERMISSION_DENIED", "missing scope chat"),
        ("PERMISSION_DENIED", "missing scope stats:read"),
    ]


async def test_model_allowance_from_claims_and_tenant_mapping(world: World) -> None:
    limited = token(models=["mock-embed"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_request(model="mock"), metadata=bearer(limited), timeout=5
        )
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
    )
    acme = token(tenant="acme")  # no models claim: the tenant's patterns apply
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_request(model="vault-model"), metadata=bearer(acme), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await world.gateway.stub.ListModels(
        models_pb2.ListModelsRequest(), metadata=bearer(acme), timeout=5
    )
    assert [m.alias for m in listed.models] == ["mock", "mock-embed"]
    everyone = await world.gateway.stub.ListModels(
        models_pb2.ListModelsRequest(), metadata=bearer(token()), timeout=5
    )
    assert [m.alias for m in everyone.models] == ["mock", "mock-embed", "vault-model"]


async def test_direct_model_names_need_a_pattern_that_names_their_provider(
    world: World,
) -> None:
    acme = token(tenant="acme")  # patterns "mock" and "mock-*": aliases only
    before = await world.upstream_requests()
    for model in ("mock-premium/expensive", "mock/anything", "vault/x"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await world.gateway.stub.Chat(
                chat_request(model=model), metadata=bearer(acme), timeout=5
            )
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MODEL_NOT_ALLOWED",
        ), model
    assert await world.upstream_requests() == before, "refused before any upstream call"
    premium = token(models=["mock-premium/*"])
    reply = await world.gateway.stub.Chat(
        chat_request(model="mock-premium/expensive"), metadata=bearer(premium), timeout=5
    )
    assert reply.message.parts[0].text == "premium answer"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_request(model="mock-premium"), metadata=bearer(premium), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_fallbacks_the_caller_may_not_use_are_never_tried(world: World) -> None:
    failing = (("x-mock-fail-status", "503"), ("x-mock-target", "mock"))
    allowed = await world.gateway.stub.Chat(
        chat_request(), metadata=bearer(token()) + failing, timeout=5
    )
    assert (allowed.route.provider, allowed.route.fallback_used) == ("vault", True)
    acme = token(tenant="acme")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(chat_request(), metadata=bearer(acme) + failing, timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert "vault" not in details.error_info.metadata.get("tried", "")


async def test_health_reflection_and_exact_exemptions(world: World) -> None:
    health = health_pb2_grpc.HealthStub(world.gateway.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "llmgateway.v1.ProviderService" in await _reflected(world.gateway.channel, ())
    listed = await world.gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
    assert len(listed.models) == 3, "ListModels is exempt by its exact name"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_closed_by_config(tmp_path: Path) -> None:
    async for world in _world(tmp_path, reflection_open=False):
        assert await _refused(world.gateway.channel, ()) == grpc.StatusCode.UNAUTHENTICATED
        assert "llmgateway.v1.ProviderService" in await _reflected(
            world.gateway.channel, bearer(token())
        )


async def _refused(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    """The status of a reflection call that the server ends before reading any request.
    None is written: a write that races the server's refusal fails on the caller's side
    (INTERNAL, "Internal error from Core") in place of the call's own status. A call the
    server accepted would wait for its request until the deadline (DEADLINE_EXCEEDED)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return await stub.ServerReflectionInfo(metadata=metadata, timeout=5).code()


async def _reflected(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(metadata=metadata, timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    if reply is grpc.aio.EOF:
        await call  # raises the call's status
    return [s.name for s in reply.list_services_response.service]


async def test_a_hostile_model_name_is_refused_without_controls_or_length(world: World) -> None:
    limited = token(models=["mock-embed"])
    hostile = "evil\r\nINFO forged line\x00" + "m" * 10_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.gateway.stub.Chat(
            chat_request(model=hostile), metadata=bearer(limited), timeout=5
        )
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
    )
    shown = details.error_info.metadata["model"]
    assert shown.startswith("evil\\r\\nINFO forged line\\x00mmm") and len(shown) <= 128
    assert not any(c in details.message + shown for c in "\r\n\x00")
    assert len(details.message) <= 256
