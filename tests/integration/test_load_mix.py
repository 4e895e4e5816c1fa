"""A bounded burst of mixed calls — streams cancelled at random points, deadlines that
expire, faults, successes, and calls refused by authentication, authorization and rate
limits — leaves exactly one audit record per call, every upstream connection closed,
and the service healthy."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import models_pb2

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import chat_request, running_gateway


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ALICE = _bearer(sign(claims("dev", sub="alice"), HS_SECRET, "HS256"))
FORGED = _bearer(sign(claims("dev", sub="alice"), "another-secret-0123456789abcdef0123", "HS256"))
GPT_ONLY = _bearer(sign(claims("dev", sub="bob", models=["gpt"]), HS_SECRET, "HS256"))
LIMITED = _bearer(sign(claims("dev", sub="limited"), HS_SECRET, "HS256"))

CALLS = 240
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
audit: {{path: "{audit}"}}
routing: {{retry: {{max_attempts: 2, initial_backoff: 0.01s}}, breaker: {{disabled: true}}}}
auth:
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
limits:
  subjects: {{limited: {{requests_per_minute: 5}}}}
providers:
  - {{name: mock, mock: {{token_delay: 0.005s, faults_from_metadata: true}}}}
  - {{name: up, api_key_env: K, base_url: "{upstream}/v1", openai: {{}}}}
models:
  - {{alias: mock, provider: mock}}
  - {{alias: gpt, provider: up, upstream_model: m}}
"""


@dataclass(frozen=True)
class Sent:
    kind: str
    request_id: str
    # The gateway ran the call: it answered (a response or a status of its own), or a
    # stream delivered a chunk before the client cancelled it. Such a call must have its
    # record. A call cancelled at once, or whose deadline passed on the client's clock,
    # may be gone before the server handed it to the application: nothing of the
    # gateway ran for it, so it may have none (never more than one).
    ran: bool


CLIENT_SIDE = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _one(stub: object, rng: random.Random, index: int) -> Sent:
    request_id = f"burst-{index}"
    kind = rng.choice(
        [
            "ok",
            "stream",
            "cancel",
            "cancel-at-once",
            "deadline",
            "fault",
            "upstream",
            "upstream-stream",
            "no-token",
            "forged",
            "denied-model",
            "rate-limited",
        ]
    )
    text = " ".join(f"w{i}" for i in range(rng.randint(1, 30)))
    call_stub = _Tagged(stub, request_id)
    ran = True
    try:
        if kind == "no-token":
            await call_stub.Chat(chat_request(text), timeout=10)  # type: ignore[attr-defined]
        elif kind == "forged":
            await call_stub.Chat(chat_request(text), metadata=FORGED, timeout=10)  # type: ignore[attr-defined]
        elif kind == "denied-model":
            await call_stub.Chat(chat_request(text), metadata=GPT_ONLY, timeout=10)  # type: ignore[attr-defined]
        elif kind == "rate-limited":
            await call_stub.Chat(chat_request(text), metadata=LIMITED, timeout=10)  # type: ignore[attr-defined]
        elif kind == "ok":
            await call_stub.Chat(chat_request(text), metadata=ALICE, timeout=10)  # type: ignore[attr-defined]
        elif kind == "upstream":
            await call_stub.Chat(chat_request(text, model="gpt"), metadata=ALICE, timeout=10)  # type: ignore[attr-defined]
        elif kind in ("stream", "upstream-stream"):
            model = "gpt" if kind == "upstream-stream" else "mock"
            async for _ in call_stub.StreamChat(
                chat_request(text, model=model), metadata=ALICE, timeout=10
            ):  # type: ignore[attr-defined]
                pass
        elif kind == "cancel":
            call = call_stub.StreamChat(chat_request(text), metadata=ALICE, timeout=10)  # type: ignore[attr-defined]
            for _ in range(rng.randint(1, 3)):
                if await call.read() is grpc.aio.EOF:
                    break
            call.cancel()
        elif kind == "cancel-at-once":
            ran = False
            call_stub.StreamChat(chat_request(text), metadata=ALICE, timeout=10).cancel()  # type: ignore[attr-defined]
        elif kind == "deadline":
            # Expires in the gateway (a stall of 5 s): recorded as DEADLINE_EXCEEDED.
            await call_stub.Chat(
                chat_request(text), metadata=(*ALICE, ("x-mock-stall", "5")), timeout=2.0
            )  # type: ignore[attr-defined]
        else:
            await call_stub.Chat(
                chat_request(text), metadata=(*ALICE, ("x-mock-fail-status", "503")), timeout=10
            )  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as error:
        ran = error.code() not in CLIENT_SIDE
    except asyncio.CancelledError:
        pass
    return Sent(kind, request_id, ran)


class _Tagged:
    """A stub whose calls carry the given x-request-id, so each call's record is found."""

    def __init__(self, stub: object, request_id: str) -> None:
        self._stub = stub
        self._request_id = request_id

    def __getattr__(self, method: str) -> Any:
        bound = getattr(self._stub, method)

        def call(request: object, metadata: Any = (), **kwargs: Any) -> Any:
            return bound(
                request, metadata=(*metadata, ("x-request-id", self._request_id)), **kwargs
            )

        return call


async def test_mixed_burst_keeps_one_record_per_call_and_the_service_healthy(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    async with FakeHttpServer(OpenAIFake(OpenAIFakeConfig(key="k")).handle) as upstream:
        config = CONFIG.format(audit=audit, upstream=upstream.url)
        environ = {"K": "k", "GW_SECRET": HS_SECRET}
        async with running_gateway(config, environ=environ) as gateway:
            rng = random.Random(20261129)
            semaphore = asyncio.Semaphore(48)

            async def bounded(index: int) -> Sent:
                async with semaphore:
                    return await _one(gateway.stub, rng, index)

            sent = await asyncio.wait_for(asyncio.gather(*(bounded(i) for i in range(CALLS))), 60)
            kinds = [call.kind for call in sent]
            assert len(kinds) == CALLS and len(set(kinds)) == 12
            health = health_pb2_grpc.HealthStub(gateway.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            after = await gateway.stub.Chat(chat_request("still here"), metadata=ALICE, timeout=5)
            assert after.message.parts[0].text == "still here"
            stats = await gateway.stub.GetProviderStats(
                models_pb2.GetProviderStatsRequest(), metadata=ALICE, timeout=5
            )
            assert sum(p.requests for p in stats.providers) >= CALLS // 2
            assert await upstream.wait_for(lambda: upstream.open_connections <= 20, 5), (
                "connections are pooled, not leaked"
            )
        records = [json.loads(line) for line in audit.read_text().splitlines()]
    # One record per call at most; exactly one for every call the gateway ran (see Sent);
    # plus the health check, the last Chat and the stats call.
    ids = [r["request_id"] for r in records]
    assert len(set(ids)) == len(ids), "never two records for one call"
    burst = {call.request_id for call in sent}
    assert sum(i not in burst for i in ids) == 3
    missing = [call for call in sent if call.ran and call.request_id not in ids]
    assert missing == [], "every call the gateway ran has its record"
    statuses = {r["status"] for r in records}
    assert {
        "OK",
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "UNAVAILABLE",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
    } <= statuses
    refused = {"no-token": "UNAUTHENTICATED", "forged": "UNAUTHENTICATED"}
    expected_refusals = sum(kinds.count(kind) for kind in refused)
    assert sum(r["status"] == "UNAUTHENTICATED" for r in records) == expected_refusals
    assert sum(r["status"] == "PERMISSION_DENIED" for r in records) == kinds.count("denied-model")
    limited = [r for r in records if r["subject"] == "limited"]
    assert len(limited) == kinds.count("rate-limited")
    assert sum(r["status"] == "OK" for r in limited) == min(5, len(limited))
