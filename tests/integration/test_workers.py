"""`server.workers: 2`: a supervisor and two worker processes sharing one port.

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT), so the tests
open new connections until each worker has been reached — a loop bounded in count — and
find out which worker one connection reaches from GetProviderStats, whose `answering`
entry names the worker that answered it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from llmgateway.v1 import models_pb2, provider_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    PYTHON,
    ROOT,
    GatewayProcess,
    chat_request,
    gateway_process,
    refusing_port,
    running_gateway,
)

CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 10s, workers: 2, replica_id: replica-a}}
auth: {{disabled: true}}
audit: {{path: {audit}, hash_chain: true}}
metrics: {{host: 127.0.0.1, port: 0}}
routing:
  retry: {{max_attempts: 1}}
providers:
  - {{name: mock, mock: {{}}}}
  - {{name: slow, mock: {{token_delay: 0.05s}}}}
models:
  - {{alias: mock, provider: mock}}
  - {{alias: slow, provider: slow}}
"""
CHAT = "/llmgateway.v1.ProviderService/Chat"
MAX_CONNECTIONS = 200  # 2 workers: the chance that 200 connections all reach one is nil
# A connection of its own for every channel: by default channels to one address share one.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(audit=tmp_path / "audit.jsonl"))
    with gateway_process(config, tmp_path) as running:
        yield running
        if running.process.poll() is None:  # drained, so the supervisor cleans up after itself
            running.process.send_signal(signal.SIGTERM)
            running.process.wait(60)


async def _stats(port: int) -> models_pb2.GetProviderStatsResponse:
    """GetProviderStats over a new connection."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        return await stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=10)


def _answering(stats: models_pb2.GetProviderStatsResponse) -> int:
    (worker,) = [w.worker for w in stats.workers if w.answering]
    return worker


def _requests(stats: models_pb2.GetProviderStatsResponse, provider: str = "mock") -> int:
    return sum(p.requests for p in stats.providers if p.provider == provider)


async def _connection_per_worker(port: int) -> AsyncIterator[tuple[int, grpc.aio.Channel]]:
    """Yields (worker, channel) for each worker once, opening new connections until every
    worker has been reached; channels reaching a worker already seen are closed."""
    seen: set[int] = set()
    for _ in range(MAX_CONNECTIONS):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        stats = await stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=10)
        worker = _answering(stats)
        if worker in seen:
            await channel.close()
            continue
        seen.add(worker)
        yield worker, channel
        if len(seen) == len(stats.workers):
            return
    raise AssertionError(f"{MAX_CONNECTIONS} connections reached only workers {seen}")


async def _scrape(gateway: GatewayProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    port = _metrics_port(gateway)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _metrics_port(gateway: GatewayProcess) -> int:
    for line in gateway.logs().splitlines():
        if '"metrics listening"' in line:
            return int(json.loads(line)["address"].rsplit(":", 1)[1])
    raise AssertionError("no metrics endpoint in the logs")


def _summed(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> tuple[float, set[str]]:
    """The sum of a series over workers, and the workers that reported it."""
    total, workers = 0.0, set()
    for (sample, sample_labels), value in samples.items():
        found = dict(sample_labels)
        worker = found.pop("worker", None)
        if sample == name and found == labels and worker is not None:
            total += value
            workers.add(worker)
    return total, workers


async def test_calls_spread_over_both_workers_and_stats_and_metrics_count_them_all(
    gateway: GatewayProcess,
) -> None:
    calls = 0
    per_worker: dict[int, int] = {}
    async for worker, channel in _connection_per_worker(gateway.port):
        async with channel:
            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            for _ in range(3 + worker):  # a different count on each worker
                await stub.Chat(chat_request("hello", model="mock"), timeout=10)
                calls += 1
            per_worker[worker] = 3 + worker
    assert sorted(per_worker) == [0, 1]

    answered_by: set[int] = set()
    for _ in range(MAX_CONNECTIONS):
        stats = await _stats(gateway.port)
        assert stats.replica_id == "replica-a"
        assert _requests(stats) == calls, "the whole server, whichever worker answers"
        assert {w.worker: w.answered for w in stats.workers} == {0: True, 1: True}
        own = {
            w.worker: sum(p.requests for p in w.providers if p.provider == "mock")
            for w in stats.workers
        }
        assert own == per_worker
        assert len({w.pid for w in stats.workers} | {os.getpid()}) == 3, "two processes"
        answered_by.add(_answering(stats))
        if answered_by == {0, 1}:
            break
    assert answered_by == {0, 1}

    samples = await _scrape(gateway)
    chats, workers = _summed(samples, "llm_gateway_rpcs_total", method=CHAT, code="OK")
    assert (chats, workers) == (calls, {"0", "1"})
    started, _ = _summed(
        samples, "llm_gateway_upstream_attempts_total", provider="mock", outcome="started"
    )
    assert started == calls
    for worker, count in per_worker.items():
        key = (
            "llm_gateway_rpcs_total",
            frozenset({("method", CHAT), ("code", "OK"), ("worker", str(worker))}),
        )
        assert samples[key] == count
    info = ("llm_gateway_replica_info", frozenset({("replica", "replica-a"), ("workers", "2")}))
    assert samples[info] == 1


async def test_sigterm_drains_both_workers_and_every_audit_record_is_chained(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    words = " ".join(f"w{i}" for i in range(20))  # 20 tokens x 50 ms: about 1 s
    streams = []
    channels = []
    async for _worker, channel in _connection_per_worker(gateway.port):
        channels.append(channel)
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        stream = stub.StreamChat(chat_request(words, model="slow"), timeout=30)
        assert (await stream.read()).text_delta == "w0"
        streams.append(stream)
    assert len(streams) == 2

    gateway.process.send_signal(signal.SIGTERM)
    for stream in streams:
        rest = []
        while (chunk := await stream.read()) is not grpc.aio.EOF:
            rest.append(chunk)
        assert "".join(["w0", *(c.text_delta for c in rest)]) == words
        assert await stream.code() == grpc.StatusCode.OK
    for channel in channels:
        await channel.close()
    assert await asyncio.to_thread(gateway.process.wait, 30) == 0
    logs = gateway.logs()
    assert logs.count('"message": "stopped"') == 3, "two workers and the supervisor"

    methods = await asyncio.to_thread(_verified_audit_methods, tmp_path)
    streamed = [m for m in methods if m.endswith("/StreamChat")]
    assert len(streamed) == 2, "each worker's stream, once"
    stats_calls = [m for m in methods if m.endswith("/GetProviderStats")]
    assert len(stats_calls) >= 2


def _verified_audit_methods(directory: Path) -> list[str]:
    """The methods of every worker's audit records, once each file's chain verifies."""
    files = sorted(directory.glob("audit.worker-*.jsonl"))
    assert [f.name for f in files] == ["audit.worker-0.jsonl", "audit.worker-1.jsonl"]
    methods = []
    for path in files:
        verified = subprocess.run(
            [PYTHON, "-m", "service", "verify-audit", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert f"ok: {len(records)} records" in verified.stdout
        methods.extend(r["method"] for r in records)
    return methods


async def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(
    gateway: GatewayProcess,
) -> None:
    before = await _stats(gateway.port)
    victim = before.workers[1]
    os.kill(victim.pid, signal.SIGKILL)

    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a wait
    while gateway.logs().count('"worker ready"') < 3:
        assert gateway.process.poll() is None, gateway.logs()
        assert time.monotonic() < deadline, gateway.logs()
        await asyncio.sleep(0.05)
    assert '"worker died: starting it again"' in gateway.logs()

    pids: dict[int, int] = {}
    async for worker, channel in _connection_per_worker(gateway.port):
        async with channel:
            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            await stub.Chat(chat_request("still here", model="mock"), timeout=10)
            stats = await stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=10)
            pids = {w.worker: w.pid for w in stats.workers if w.answered}
            assert _answering(stats) == worker
    assert pids[0] == before.workers[0].pid
    assert pids[1] not in (0, victim.pid), "a new process holds worker 1"

    samples = await _scrape(gateway)
    restarts = ("llm_gateway_worker_restarts_total", frozenset({("worker", "1")}))
    assert samples[restarts] == 1
    assert samples[("llm_gateway_worker_restarts_total", frozenset({("worker", "0")}))] == 0


def test_in_process_limits_with_several_workers_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "server: {workers: 2}\nauth: {disabled: true}\n"
        "limits: {subject: {requests_per_minute: 10}}\n"
        "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
    )
    result = subprocess.run(
        [PYTHON, "-m", "service", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.workers: 2 workers would each keep their own rate limits" in result.stderr
    assert "set redis (or limits.redis)" in result.stderr
    assert "listening" not in result.stdout + result.stderr


async def test_one_process_names_its_replica_in_stats_and_metrics() -> None:
    config = (
        "server: {host: 127.0.0.1, port: 0}\nmetrics: {host: 127.0.0.1, port: 0}\n"
        "providers:\n  - {name: mock, mock: {}}\nmodels:\n  - {alias: mock, provider: mock}\n"
    )
    async with running_gateway(config, environ={"HOSTNAME": "gw-5f7c9-x2x"}) as gateway:
        await gateway.stub.Chat(chat_request("hi", model="mock"), timeout=10)
        stats = await gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest())
        assert stats.replica_id == "gw-5f7c9-x2x"
        assert list(stats.workers) == [], "one process: no per-worker entries"
        assert _requests(stats) == 1
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{gateway.server.metrics_port}/metrics", timeout=10
            )
    info = [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "llm_gateway_replica_info"
    ]
    assert [(s.labels, s.value) for s in info] == [
        ({"replica": "gw-5f7c9-x2x", "workers": "1"}, 1.0)
    ]


def test_a_port_another_socket_holds_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    with refusing_port() as port:
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}, workers: 2}}\nauth: {{disabled: true}}\n"
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
        )
        result = subprocess.run(
            [PYTHON, "-m", "service", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert '"cannot start"' in result.stderr
    assert '"worker ready"' not in result.stderr
