"""A subject or tenant is always that of one issuer. Two issuers (an internal HS256 one
and a corporate RS256 one) hand out tokens with the same `sub` and the same tenant
claim: their rate limits, budgets and cache partitions stay apart, in process and in a
shared Redis, and the audit record names the issuer, key, token id and user agent."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.v1 import models_pb2, provider_service_pb2_grpc

from tests.fakes.keys import HS_SECRET, claims, rsa_pair, sign
from tests.fakes.redis_server import RedisServer, redis_server
from tests.support import Gateway, chat_request, details_of, running_gateway

CORP = rsa_pair("corp-key-1")
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
audit: {{path: "{audit}"}}
auth:
  issuers:
    - {{issuer: internal, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
    - issuer: https://corp.example/
      audiences: [llm-gateway]
      algorithms: [RS256]
      public_keys: [{{kid: corp-key-1, pem_file: "{pem}"}}]
limits:
{limits}
cache: {{share_without_tenant: {share_without_tenant}}}
providers:
  - {{name: mock, mock: {{}}}}
models:
  - alias: mock
    provider: mock
    pricing: {{input_per_million: 100000, output_per_million: 100000}}
  - {{alias: cached, provider: mock, cache: {{ttl: 60s}}}}
"""
_prefixes = itertools.count()


def internal(sub: str = "alice", **extra: Any) -> tuple[tuple[str, str], ...]:
    token = sign(claims("internal", sub=sub, **extra), HS_SECRET, "HS256")
    return (("authorization", f"Bearer {token}"),)


def corp(sub: str = "alice", **extra: Any) -> tuple[tuple[str, str], ...]:
    token = sign(
        claims("https://corp.example/", sub=sub, **extra), CORP.private, "RS256", kid=CORP.kid
    )
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@contextlib.asynccontextmanager
async def gateway_with(
    tmp_path: Path,
    limits: str = "  {}",
    redis: RedisServer | None = None,
    share_without_tenant: bool = False,
) -> AsyncIterator[Gateway]:
    pem = tmp_path / "corp.pem"
    pem.write_bytes(CORP.public_pem)
    environ = {"GW_SECRET": HS_SECRET}
    if redis is not None:
        limits += f"\n  redis: {{url_env: GW_REDIS_URL, key_prefix: 'iss{next(_prefixes)}:'}}"
        environ["GW_REDIS_URL"] = redis.url
    config = CONFIG.format(
        audit=tmp_path / "audit.jsonl",
        pem=pem,
        limits=limits,
        share_without_tenant=str(share_without_tenant).lower(),
    )
    async with running_gateway(config, environ=environ) as gateway:
        yield gateway


async def refused(gateway: Gateway, metadata: tuple[tuple[str, str], ...], text: str = "hi") -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request(text), metadata=metadata, timeout=5)
    return details_of(caught.value)


async def upstream_requests(gateway: Gateway) -> int:
    stats = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(), metadata=internal("ops"), timeout=5
    )
    return sum(p.requests for p in stats.providers)


STORES = [pytest.param(False, id="in-process"), pytest.param(True, id="redis")]


@pytest.mark.parametrize("shared", STORES)
async def test_the_same_sub_from_two_issuers_has_two_rate_limits(
    tmp_path: Path, redis: RedisServer, shared: bool
) -> None:
    async with gateway_with(
        tmp_path, "  subject: {requests_per_minute: 2}", redis if shared else None
    ) as gateway:
        for _ in range(2):
            await gateway.stub.Chat(chat_request(), metadata=internal(), timeout=5)
        internal_refusal = await refused(gateway, internal())
        # The corporate alice never shared that bucket: both her calls are served.
        for _ in range(2):
            reply = await gateway.stub.Chat(chat_request(), metadata=corp(), timeout=5)
            assert reply.message.parts[0].text == "Hello there"
        assert internal_refusal.error_info.reason == "CALLER_RATE_LIMITED"
        assert internal_refusal.error_info.metadata["issuer"] == "internal"
        assert internal_refusal.quota_failure.violations[0].subject == "subject:alice"
        details = await refused(gateway, corp())
        assert details.error_info.metadata["issuer"] == "https://corp.example/"
        assert await upstream_requests(gateway) == 4


@pytest.mark.parametrize("shared", STORES)
async def test_the_same_tenant_from_two_issuers_has_two_budgets(
    tmp_path: Path, redis: RedisServer, shared: bool
) -> None:
    # "a b" costs $0.40; each tenant's daily budget is $0.80.
    limits = "  tenant: {budget_usd: 0.8, budget_period: BUDGET_PERIOD_DAY}"
    async with gateway_with(tmp_path, limits, redis if shared else None) as gateway:
        for sub in ("u1", "u2"):
            await gateway.stub.Chat(
                chat_request("a b"), metadata=internal(sub, tenant="acme"), timeout=5
            )
        details = await refused(gateway, internal("u3", tenant="acme"), "a b")
        assert details.error_info.reason == "BUDGET_EXCEEDED"
        assert details.quota_failure.violations[0].subject == "tenant:acme"
        reply = await gateway.stub.Chat(
            chat_request("a b"), metadata=corp("u3", tenant="acme"), timeout=5
        )
        assert reply.usage.cost_usd == pytest.approx(0.4), "corp's acme has its own budget"


async def test_an_issuer_scoped_override_wins_over_the_bare_name(tmp_path: Path) -> None:
    limits = (
        "  subjects: {alice: {requests_per_minute: 2}}\n"
        "  issuers: {internal: {subjects: {alice: {requests_per_minute: 1}}}}"
    )
    async with gateway_with(tmp_path, limits) as gateway:
        await gateway.stub.Chat(chat_request(), metadata=internal(), timeout=5)
        assert (await refused(gateway, internal())).error_info.reason == "CALLER_RATE_LIMITED"
        for _ in range(2):  # the bare name's limit: alice of any other issuer
            await gateway.stub.Chat(chat_request(), metadata=corp(), timeout=5)
        assert (await refused(gateway, corp())).error_info.reason == "CALLER_RATE_LIMITED"
        # Others are unlimited.
        for _ in range(3):
            await gateway.stub.Chat(chat_request(), metadata=internal("bob"), timeout=5)


async def _hit(gateway: Gateway, metadata: tuple[tuple[str, str], ...]) -> bool:
    reply = await gateway.stub.Chat(
        chat_request("what is the capital of France?", model="cached"), metadata=metadata, timeout=5
    )
    return reply.route.cache_hit


async def test_cache_partitions_follow_the_issuer(tmp_path: Path) -> None:
    async with gateway_with(tmp_path) as gateway:
        assert not await _hit(gateway, corp("alice", tenant="acme"))
        assert await _hit(gateway, corp("bob", tenant="acme")), "one tenant shares entries"
        assert not await _hit(gateway, internal("mallory", tenant="acme")), (
            "claiming another issuer's tenant reads none of its entries"
        )
        assert await _hit(gateway, internal("eve", tenant="acme"))
        # Callers without a tenant: each has entries of its own.
        assert not await _hit(gateway, internal("carol"))
        assert not await _hit(gateway, internal("dave"))
        assert not await _hit(gateway, corp("carol"))
        assert await _hit(gateway, internal("carol"))


async def test_callers_without_a_tenant_may_share_within_their_issuer(tmp_path: Path) -> None:
    async with gateway_with(tmp_path, share_without_tenant=True) as gateway:
        assert not await _hit(gateway, internal("carol"))
        assert await _hit(gateway, internal("dave"))
        assert not await _hit(gateway, corp("carol")), "never across issuers"
        assert not await _hit(gateway, internal("erin", tenant="acme")), "nor into a tenant"


async def test_the_audit_record_names_issuer_key_token_and_user_agent(tmp_path: Path) -> None:
    async with gateway_with(tmp_path) as gateway:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{gateway.port}", options=[("grpc.primary_user_agent", "billing-job/2.1")]
        )
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        try:
            await stub.Chat(chat_request(), metadata=corp(jti="tok-7f3a"), timeout=5)
            await stub.Chat(chat_request(), metadata=internal(), timeout=5)
        finally:
            await channel.close()
        await gateway.stub.Chat(chat_request(), metadata=internal("bob"), timeout=5)
    # The server has stopped: every record is in the file.
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3]
    first, second, third = records
    assert first["issuer"] == "https://corp.example/"
    assert (first["subject"], first["kid"], first["jti"]) == ("alice", "corp-key-1", "tok-7f3a")
    assert first["user_agent"].startswith("billing-job/2.1 ")
    assert (second["issuer"], second["kid"], second["jti"]) == ("internal", "", "")
    assert second["user_agent"].startswith("billing-job/2.1 ")
    assert third["subject"] == "bob" and not third["user_agent"].startswith("billing-job")


AUTHORIZATION = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
auth:
  issuers:
    - {{issuer: internal, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
    - issuer: https://corp.example/
      audiences: [llm-gateway]
      algorithms: [RS256]
      public_keys: [{{kid: corp-key-1, pem_file: "{pem}"}}]
  authorization:
    default_models: [basic]
    tenant_models: {{acme: {{patterns: [mock]}}}}
    issuers:
      https://corp.example/: {{tenant_models: {{acme: {{patterns: [premium]}}}}}}
providers:
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: mock, provider: mock}}
  - {{alias: premium, provider: mock}}
  - {{alias: basic, provider: mock}}
"""


async def refused_model(gateway: Gateway, metadata: tuple[tuple[str, str], ...], model: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request(model=model), metadata=metadata, timeout=5)
    return details_of(caught.value)


async def test_a_tenant_allowance_scoped_to_an_issuer_is_that_issuers_alone(
    tmp_path: Path,
) -> None:
    pem = tmp_path / "corp.pem"
    pem.write_bytes(CORP.public_pem)
    config = AUTHORIZATION.format(pem=pem)
    async with running_gateway(config, environ={"GW_SECRET": HS_SECRET}) as gateway:
        # The internal issuer's acme never gets the corporate acme's allowance ...
        internal_premium = await refused_model(gateway, internal(tenant="acme"), "premium")
        # ... and the corporate acme's own allowance wins over the bare name's.
        corp_mock = await refused_model(gateway, corp(tenant="acme"), "mock")
        assert await upstream_requests(gateway) == 0
        # The bare name still applies to every issuer without an allowance of its own.
        served = await gateway.stub.Chat(
            chat_request(model="mock"), metadata=internal(tenant="acme"), timeout=5
        )
        reply = await gateway.stub.Chat(
            chat_request(model="premium"), metadata=corp(tenant="acme"), timeout=5
        )
        internal_models = await gateway.stub.ListModels(
            models_pb2.ListModelsRequest(), metadata=internal(tenant="acme"), timeout=5
        )
        corp_models = await gateway.stub.ListModels(
            models_pb2.ListModelsRequest(), metadata=corp(tenant="acme"), timeout=5
        )
    for details in (internal_premium, corp_mock):
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MODEL_NOT_ALLOWED",
        )
    assert served.message.parts[0].text == "Hello there"
    assert reply.message.parts[0].text == "Hello there"
    assert [m.alias for m in internal_models.models] == ["mock"]
    assert [m.alias for m in corp_models.models] == ["premium"]
