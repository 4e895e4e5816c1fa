"""Prometheus metrics through the real endpoint: per-call counters agree with what the
calls returned, gateway state (attempts, breakers, audit, load shedding) is read at
scrape time, label values stay bounded, and the endpoint goes away with the server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import models_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Gateway, chat_request, running_gateway

CHAT = "/llmgateway.v1.ProviderService/Chat"
STREAM = "/llmgateway.v1.ProviderService/StreamChat"
CONFIG = """
server: {host: 127.0.0.1, port: 0, max_in_flight: 8}
allow_direct_model_addressing: true
metrics: {host: 127.0.0.1, port: 0}
routing: {retry: {max_attempts: 1}, breaker: {consecutive_failures: 2, cool_down: 30s}}
providers:
  - {name: primary, mock: {faults_from_metadata: true}}
  - {name: backup, mock: {faults_from_metadata: true}}
models:
  - alias: main
    provider: primary
    upstream_model: m-main
    fallbacks: [spare]
    pricing: {input_per_million: 1000000, output_per_million: 2000000}
  - {alias: spare, provider: backup, upstream_model: m-spare}
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture(loop_scope="session")
async def gateway() -> AsyncIterator[Gateway]:
    async with running_gateway(CONFIG) as running:
        yield running


async def scrape(gateway: Gateway) -> Samples:
    port = gateway.server.metrics_port
    assert port, "the endpoint listens"
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_call_counters_agree_with_what_the_calls_returned(gateway: Gateway) -> None:
    before = await scrape(gateway)
    replies = [
        await gateway.stub.Chat(chat_request("one two", model="main"), timeout=5) for _ in range(3)
    ]
    chunks = [c async for c in gateway.stub.StreamChat(chat_request("a b c", model="main"))]
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.stub.Chat(chat_request("x", model="no-such-model"), timeout=5)
    direct = await gateway.stub.Chat(chat_request("d e", model="backup/free-form-7"), timeout=5)
    after = await scrape(gateway)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("llm_gateway_rpcs_total", method=CHAT, code="OK") == 4
    assert grew("llm_gateway_rpcs_total", method=STREAM, code="OK") == 1
    assert grew("llm_gateway_rpcs_total", method=CHAT, code="NOT_FOUND") == 1
    assert grew("llm_gateway_rpc_duration_seconds_count", method=CHAT) == 5
    assert grew("llm_gateway_stream_first_chunk_seconds_count", model="main") == 1
    usages = [r.usage for r in replies] + [chunks[-1].usage]
    assert grew("llm_gateway_tokens_total", model="main", direction="input") == sum(
        u.input_tokens for u in usages
    )
    assert grew("llm_gateway_tokens_total", model="main", direction="output") == sum(
        u.output_tokens for u in usages
    )
    assert grew("llm_gateway_cost_usd_total", model="main") == pytest.approx(
        sum(u.cost_usd for u in usages)
    )
    # Models outside the configured aliases are counted under one bounded label value.
    assert grew("llm_gateway_tokens_total", model="other", direction="input") == (
        direct.usage.input_tokens
    )
    models = {dict(labels).get("model") for _, labels in after}
    assert not models & {"no-such-model", "backup/free-form-7"}


async def test_unknown_methods_are_one_bounded_label(gateway: Gateway) -> None:
    before = await scrape(gateway)
    for name in ("/llmgateway.v1.ProviderService/Nope", "/made.up.Service/Call"):
        call = gateway.channel.unary_unary(name)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(gateway.channel)
    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    after = await scrape(gateway)
    assert (
        value(after, "llm_gateway_rpcs_total", method="other", code="UNIMPLEMENTED")
        - value(before, "llm_gateway_rpcs_total", method="other", code="UNIMPLEMENTED")
        == 2
    )
    methods = {dict(labels).get("method") for _, labels in after} - {None}
    assert "/made.up.Service/Call" not in methods
    assert "/grpc.health.v1.Health/Check" in methods


async def test_fallbacks_attempts_and_breakers_are_reported(gateway: Gateway) -> None:
    fail = (("x-mock-fail-status", "503"), ("x-mock-target", "primary"))
    for _ in range(2):
        reply = await gateway.stub.Chat(chat_request("hi", model="main"), metadata=fail, timeout=5)
        assert reply.route.fallback_used and reply.route.provider == "backup"
    samples = await scrape(gateway)
    stats = await gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5)
    by_name = {p.provider: p for p in stats.providers}
    for provider in ("primary", "backup"):
        for outcome, count in (
            ("started", by_name[provider].requests),
            ("success", by_name[provider].successes),
            ("failure", by_name[provider].failures),
        ):
            assert (
                value(
                    samples,
                    "llm_gateway_upstream_attempts_total",
                    provider=provider,
                    outcome=outcome,
                )
                == count
            ), (provider, outcome)
    assert value(samples, "llm_gateway_fallbacks_total", model="main") >= 2
    circuit = {
        state: value(
            samples,
            "llm_gateway_circuit_state",
            provider="primary",
            upstream_model="m-main",
            state=state,
        )
        for state in ("closed", "open", "half_open")
    }
    assert circuit == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    assert (
        value(
            samples, "llm_gateway_circuit_opened_total", provider="primary", upstream_model="m-main"
        )
        == 1
    )


async def test_a_quota_cool_down_is_reported(gateway: Gateway) -> None:
    # 402: the provider says the gateway's account is out of quota.
    out = (("x-mock-fail-status", "402"), ("x-mock-target", "backup"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request("x", model="backup/out-of-quota"), metadata=out)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    samples = await scrape(gateway)
    name = "llm_gateway_quota_cool_down_remaining_seconds"
    resting = value(samples, name, provider="backup", upstream_model="out-of-quota")
    assert 0 < resting <= 60, "the default cool-down"
    assert value(samples, name, provider="primary", upstream_model="m-main") == 0


async def _scrape_until(gateway: Gateway, in_flight: int) -> Samples:
    """The first scrape that shows `in_flight` calls in flight (bounded: 100 scrapes)."""
    for _ in range(100):
        samples = await scrape(gateway)
        if value(samples, "llm_gateway_calls_in_flight") == in_flight:
            break
        await asyncio.sleep(0.01)
    return samples


async def test_state_is_read_while_calls_are_in_flight(gateway: Gateway) -> None:
    # Stalled far longer than the test: it is in flight until the test cancels it.
    stall = (("x-mock-stall", "30"), ("x-mock-target", "backup"))
    call = gateway.stub.Chat(chat_request("slow", model="spare"), metadata=stall, timeout=60)
    samples = await _scrape_until(gateway, 1)
    assert value(samples, "llm_gateway_calls_in_flight") == 1
    assert ("llm_gateway_calls_shed_total", frozenset()) in samples
    call.cancel()
    assert value(await _scrape_until(gateway, 0), "llm_gateway_calls_in_flight") == 0


async def test_audit_counters_match_the_records() -> None:
    async with running_gateway(CONFIG) as gateway:
        for _ in range(4):
            await gateway.stub.Chat(chat_request("hi", model="main"), timeout=5)
        samples = await scrape(gateway)
        sink = gateway.server.audit.stats()
        assert (
            value(samples, "llm_gateway_audit_records_total", outcome="written") == sink["written"]
        )
        assert value(samples, "llm_gateway_audit_records_total", outcome="dropped") == 0
        calls = sum(v for (name, _), v in samples.items() if name == "llm_gateway_rpcs_total")
        assert calls == 4 == sink["submitted"], "one record and one count per RPC"
        port = gateway.server.metrics_port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the endpoint closed with the server"


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-gateway.json"


async def test_the_dashboard_queries_only_exposed_metrics_and_labels() -> None:
    config = CONFIG.replace(
        "  - {alias: spare, provider: backup, upstream_model: m-spare}",
        "  - {alias: spare, provider: backup, upstream_model: m-spare, cache: {ttl: 60s}}",
    )
    async with running_gateway(config) as gateway:
        fail = (("x-mock-fail-status", "503"), ("x-mock-target", "primary"))
        await gateway.stub.Chat(chat_request("hi", model="main"), metadata=fail, timeout=5)
        for _ in range(2):
            await gateway.stub.Chat(chat_request("hi", model="spare"), timeout=5)
        _ = [c async for c in gateway.stub.StreamChat(chat_request("a b", model="main"))]
        port = gateway.server.metrics_port
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(expressions) >= 14
    for expr in expressions:
        names = re.findall(r"\bllm_gateway_\w+", expr)
        assert names, expr
        labels = set(re.findall(r"(\w+)\s*(?:!=|=~|!~|=)\s*\"", expr))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels.update(label.strip() for label in group.split(","))
        for name in names:
            assert name in exposed, f"{name} is not exposed ({expr})"
        available = set().union(*(exposed[name] for name in names))
        assert labels <= available, f"{expr}: labels {labels - available} do not exist"


async def test_the_endpoint_listens_on_loopback_unless_a_host_is_named() -> None:
    """The gRPC port on another loopback address (127.0.0.2): the endpoint does not follow
    it, it stays on 127.0.0.1; an explicit metrics.host is used as given."""
    config = (
        "server: {host: 127.0.0.2, port: 0}\nmetrics: {port: 0}\n"
        "providers: [{name: mock, mock: {}}]\nmodels: [{alias: mock, provider: mock}]\n"
    )
    async with running_gateway(config) as gateway:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{gateway.server.metrics_port}/metrics", timeout=5
            )
        assert response.status_code == 200
        assert gateway.server.metrics_host == "127.0.0.1"
    named = config.replace("metrics: {port: 0}", "metrics: {host: 127.0.0.3, port: 0}")
    async with running_gateway(named) as gateway:
        assert gateway.server.metrics_host == "127.0.0.3"
