"""Pure parts of the multi-process mode: the stats merge, the metrics join, the worker's
config, the replica id and the config checks."""

from __future__ import annotations

import pytest
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import models_pb2
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.config import ConfigError, parse_config
from service.workers.exposition import joined, labelled
from service.workers.merge import merge_providers, whole_server
from service.workers.role import WorkerRole, replica_id_of, worker_audit_path, worker_config
from service.workers.supervisor import RestartBudget

OPEN = models_pb2.CIRCUIT_STATE_OPEN
CLOSED = models_pb2.CIRCUIT_STATE_CLOSED
HALF_OPEN = models_pb2.CIRCUIT_STATE_HALF_OPEN


def _stats(
    provider: str, requests: int, latency_ms: int, *deployments: models_pb2.DeploymentStats
) -> models_pb2.ProviderStats:
    stats = models_pb2.ProviderStats(
        provider=provider,
        provider_type="mock",
        requests=requests,
        successes=requests - 1,
        failures=1,
        cancelled=2,
        retries=3,
        retries_denied=1,
        deployments=deployments,
    )
    stats.average_latency.FromMilliseconds(latency_ms)
    return stats


def _deployment(
    state: int, failures: int, opened: int, cool_down_s: int = 0, transitions: tuple[str, ...] = ()
) -> models_pb2.DeploymentStats:
    deployment = models_pb2.DeploymentStats(
        upstream_model="m",
        circuit_state=state,  # type: ignore[arg-type]
        consecutive_failures=failures,
        times_opened=opened,
        transitions=transitions,
    )
    deployment.quota_cool_down_remaining.FromSeconds(cool_down_s)
    return deployment


def test_counts_are_summed_and_latency_weighted_by_finished_attempts() -> None:
    merged = merge_providers([[_stats("a", 10, 100)], [_stats("a", 30, 300)], []])
    assert len(merged) == 1
    total = merged[0]
    assert (total.requests, total.successes, total.failures) == (40, 38, 2)
    assert (total.cancelled, total.retries, total.retries_denied) == (4, 6, 2)
    # 10 finished at 100 ms and 30 at 300 ms: 250 ms, not the plain mean of 200 ms.
    assert total.average_latency.ToMilliseconds() == 250


def test_a_provider_only_one_worker_knows_is_kept_and_names_are_sorted() -> None:
    merged = merge_providers([[_stats("b", 5, 10)], [_stats("a", 7, 10), _stats("b", 1, 10)]])
    assert [(s.provider, s.requests) for s in merged] == [("a", 7), ("b", 6)]


def test_a_breaker_open_in_any_worker_is_reported_open_with_that_workers_details() -> None:
    closed = _deployment(CLOSED, 2, 1, cool_down_s=30)
    opened = _deployment(OPEN, 5, 2, transitions=("CLOSED->OPEN",))
    half = _deployment(HALF_OPEN, 0, 1)
    merged = merge_providers(
        [[_stats("a", 3, 1, closed)], [_stats("a", 3, 1, opened)], [_stats("a", 3, 1, half)]]
    )
    deployment = merged[0].deployments[0]
    assert deployment.circuit_state == OPEN
    assert deployment.consecutive_failures == 5
    assert list(deployment.transitions) == ["CLOSED->OPEN"]
    assert deployment.times_opened == 4, "summed over the workers"
    assert deployment.quota_cool_down_remaining.ToSeconds() == 30, "the longest"


def test_half_open_wins_over_closed() -> None:
    merged = merge_providers(
        [
            [_stats("a", 3, 1, _deployment(CLOSED, 4, 0))],
            [_stats("a", 3, 1, _deployment(HALF_OPEN, 0, 1))],
        ]
    )
    assert merged[0].deployments[0].circuit_state == HALF_OPEN


def test_the_whole_server_counts_only_workers_that_answered_and_lists_every_worker() -> None:
    answered = models_pb2.GatewayWorkerStats(
        worker=1, pid=11, answered=True, providers=[_stats("a", 4, 1)]
    )
    own = models_pb2.GatewayWorkerStats(
        worker=0, pid=10, answered=True, answering=True, providers=[_stats("a", 6, 1)]
    )
    silent = models_pb2.GatewayWorkerStats(worker=2, answered=False)
    response = whole_server("pod-1", [answered, silent, own])
    assert response.replica_id == "pod-1"
    assert [w.worker for w in response.workers] == [0, 1, 2]
    assert response.providers[0].requests == 10
    assert [w.answered for w in response.workers] == [True, True, False]


def test_metrics_of_several_workers_are_labelled_and_joined_into_one_family_each() -> None:
    texts = []
    for calls in (2, 3):
        registry = CollectorRegistry()
        counter = Counter("calls", "Calls.", ["method"], registry=registry)
        counter.labels("Chat").inc(calls)
        texts.append(generate_latest(registry).decode())
    families = joined(labelled(text, {"worker": str(i)}) for i, text in enumerate(texts))
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> list[object]:
            return list(families)

    registry.register(Fixed())  # type: ignore[arg-type]
    served = text_string_to_metric_families(generate_latest(registry).decode())
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in served for s in f.samples}
    assert samples[("calls_total", frozenset({("method", "Chat"), ("worker", "0")}))] == 2
    assert samples[("calls_total", frozenset({("method", "Chat"), ("worker", "1")}))] == 3
    names = [f.name for f in families]
    assert "calls" in names and len(names) == len(set(names)), "one family per name"


def test_each_worker_gets_its_own_audit_file_the_chosen_port_and_no_metrics_port() -> None:
    config = config_pb2.GatewayConfig()
    config.server.port = 0
    config.metrics.port = 9100
    config.audit.path = "/var/log/gw/audit.jsonl"
    own = worker_config(config, WorkerRole(index=1, count=2, run_dir="/run"), 4242)
    assert own.server.port == 4242
    assert not own.metrics.HasField("port")
    assert own.audit.path == "/var/log/gw/audit.worker-1.jsonl"
    assert config.audit.path == "/var/log/gw/audit.jsonl", "the original is left alone"
    assert worker_audit_path("audit", 0) == "audit.worker-0"


def test_the_replica_id_comes_from_config_then_hostname() -> None:
    server = config_pb2.ServerConfig()
    assert replica_id_of(server, {"HOSTNAME": "gw-7d9-abc"}) == "gw-7d9-abc"
    server.replica_id = "eu-1"
    assert replica_id_of(server, {"HOSTNAME": "gw-7d9-abc"}) == "eu-1"
    assert replica_id_of(config_pb2.ServerConfig(), {})  # the host name


BASE = "auth: {disabled: true}\nproviders:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
REDIS_ENV = {"LIMITS_URL": "redis://127.0.0.1:6379"}


@pytest.mark.parametrize(
    ("extra", "path", "problem"),
    [
        (
            "server: {workers: 2}\nlimits: {subject: {requests_per_minute: 10}}\n",
            "server.workers",
            "2 times the configured limits: set redis (or limits.redis)",
        ),
        (
            "server: {workers: 3}\nlimits: {tenants: {acme: {requests_per_minute: 10}}}\n",
            "server.workers",
            "3 times",
        ),
        ("server: {workers: 0}\n", "server.workers", "between 1 and 64"),
        ("server: {workers: 65}\n", "server.workers", "between 1 and 64"),
        ("server: {workers: 2}\naudit: {path: '-'}\n", "audit.path", "interleave"),
        ('server: {replica_id: "a\\nb"}\n', "server.replica_id", "printable"),
    ],
)
def test_configs_that_workers_would_break_are_refused(extra: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra, REDIS_ENV)
    assert caught.value.path == path
    assert problem in caught.value.problem


@pytest.mark.parametrize(
    "extra",
    [
        "server: {workers: 2}\n",
        "server: {workers: 1}\nlimits: {subject: {requests_per_minute: 10}}\n",
        "server: {workers: 2}\nlimits:\n  subject: {requests_per_minute: 10}\n"
        "  redis: {url_env: LIMITS_URL}\n",
        "server: {workers: 2}\naudit: {path: audit.jsonl, hash_chain: true}\n",
    ],
)
def test_configs_workers_can_share_are_accepted(extra: str) -> None:
    assert parse_config(BASE + extra, REDIS_ENV).config.server.workers in (1, 2)


def test_restarts_are_bounded_per_window() -> None:
    budget = RestartBudget(limit=2, window=60.0)
    assert budget.allow(0.0) and budget.allow(10.0)
    assert not budget.allow(59.0), "a third restart within the minute"
    assert budget.allow(60.0), "the first one has left the window"
    assert not budget.allow(61.0)
