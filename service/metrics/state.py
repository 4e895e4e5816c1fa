"""Gateway state read at scrape time: upstream attempts and circuit breakers (the same
snapshot GetProviderStats returns), the audit log's counters, limit-store failures and
load shedding. The counters live where they are kept; this only reports them."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from llmgateway.v1 import models_pb2
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

T = TypeVar("T")
SNAPSHOT_TIMEOUT = 2.0
_STATES = {
    models_pb2.CIRCUIT_STATE_CLOSED: "closed",
    models_pb2.CIRCUIT_STATE_OPEN: "open",
    models_pb2.CIRCUIT_STATE_HALF_OPEN: "half_open",
}


@dataclass(frozen=True)
class GatewaySnapshot:
    providers: list[models_pb2.ProviderStats]
    audit: Mapping[str, int]
    limit_store_failures: int
    in_flight: int | None = None  # None: no cap on calls in flight is configured
    shed: int | None = None
    cache: Mapping[str, int] | None = None  # None: no alias uses the response cache
    # The shared store's guard and the spend kept during its outages; None: no store.
    shared_store: Mapping[str, int] | None = None


def on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T]) -> T:
    """Runs `read` on the event loop that owns the state and waits for its result, so
    that a scrape from the endpoint's thread never sees a structure mid-change."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return read()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(read())
        except BaseException as exc:
            result.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return result.result(timeout=SNAPSHOT_TIMEOUT)


class StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], GatewaySnapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        if snapshot is None:
            return
        yield from _providers(snapshot.providers)
        audit = CounterMetricFamily(
            "llm_gateway_audit_records",
            "Audit records by what became of them (written, dropped, discarded).",
            labels=["outcome"],
        )
        for outcome in ("written", "dropped", "discarded"):
            audit.add_metric([outcome], snapshot.audit.get(outcome, 0))
        yield audit
        yield CounterMetricFamily(
            "llm_gateway_audit_write_errors",
            "Failed writes of the audit log.",
            value=snapshot.audit.get("write_errors", 0),
        )
        yield GaugeMetricFamily(
            "llm_gateway_audit_queue_depth",
            "Audit records waiting to be written.",
            value=snapshot.audit.get("queued", 0),
        )
        yield CounterMetricFamily(
            "llm_gateway_limit_store_failures",
            "Times the rate-limit store could not answer.",
            value=snapshot.limit_store_failures,
        )
        if snapshot.cache is not None:
            yield from _cache(snapshot.cache)
        if snapshot.shared_store is not None:
            yield from _shared_store(snapshot.shared_store)
        if snapshot.in_flight is not None:
            yield GaugeMetricFamily(
                "llm_gateway_calls_in_flight",
                "ProviderService calls admitted and not yet finished.",
                value=snapshot.in_flight,
            )
        if snapshot.shed is not None:
            yield CounterMetricFamily(
                "llm_gateway_calls_shed",
                "ProviderService calls refused because too many were in flight.",
                value=snapshot.shed,
            )


def _providers(providers: list[models_pb2.ProviderStats]) -> Iterator[Metric]:
    attempts = CounterMetricFamily(
        "llm_gateway_upstream_attempts",
        "Upstream attempts by provider and outcome.",
        labels=["provider", "outcome"],
    )
    retries = CounterMetricFamily(
        "llm_gateway_upstream_retries",
        "Attempts that were retries of a failed one.",
        labels=["provider"],
    )
    denied = CounterMetricFamily(
        "llm_gateway_upstream_retries_denied",
        "Retries the provider's retry budget refused.",
        labels=["provider"],
    )
    latency = GaugeMetricFamily(
        "llm_gateway_upstream_average_latency_seconds",
        "Average latency of finished upstream attempts since start-up.",
        labels=["provider"],
    )
    circuit = GaugeMetricFamily(
        "llm_gateway_circuit_state",
        "1 for the current state of a deployment's circuit breaker, 0 for the others.",
        labels=["provider", "upstream_model", "state"],
    )
    opened = CounterMetricFamily(
        "llm_gateway_circuit_opened",
        "Times a deployment's circuit breaker opened.",
        labels=["provider", "upstream_model"],
    )
    resting = GaugeMetricFamily(
        "llm_gateway_quota_cool_down_remaining_seconds",
        "Time left before a deployment whose provider said it is out of quota is called"
        " again; 0 when it is not cooling down.",
        labels=["provider", "upstream_model"],
    )
    for stats in providers:
        name = stats.provider
        attempts.add_metric([name, "started"], stats.requests)
        attempts.add_metric([name, "success"], stats.successes)
        attempts.add_metric([name, "failure"], stats.failures)
        attempts.add_metric([name, "cancelled"], stats.cancelled)
        retries.add_metric([name], stats.retries)
        denied.add_metric([name], stats.retries_denied)
        latency.add_metric([name], stats.average_latency.ToNanoseconds() / 1e9)
        for deployment in stats.deployments:
            current = _STATES.get(deployment.circuit_state, "closed")
            for state in _STATES.values():
                circuit.add_metric(
                    [name, deployment.upstream_model, state], 1.0 if state == current else 0.0
                )
            opened.add_metric([name, deployment.upstream_model], deployment.times_opened)
            resting.add_metric(
                [name, deployment.upstream_model],
                deployment.quota_cool_down_remaining.ToNanoseconds() / 1e9,
            )
    yield from (attempts, retries, denied, latency, circuit, opened, resting)


def _cache(cache: Mapping[str, int]) -> Iterator[Metric]:
    lookups = CounterMetricFamily(
        "llm_gateway_cache_lookups",
        "Response cache lookups by result.",
        labels=["result"],
    )
    lookups.add_metric(["hit"], cache["hits"])
    lookups.add_metric(["miss"], cache["misses"])
    yield lookups
    yield CounterMetricFamily(
        "llm_gateway_cache_evictions",
        "Responses removed from the cache to make room.",
        value=cache["evictions"],
    )
    yield GaugeMetricFamily(
        "llm_gateway_cache_entries", "Responses in the cache.", value=cache["entries"]
    )
    yield GaugeMetricFamily(
        "llm_gateway_cache_bytes", "Bytes of responses in the cache.", value=cache["bytes"]
    )
    yield CounterMetricFamily(
        "llm_gateway_cache_unavailable",
        "Cache lookups and stores the shared store did not answer (served without cache).",
        value=cache.get("unavailable", 0),
    )
    yield CounterMetricFamily(
        "llm_gateway_cache_too_large",
        "Answers not kept because they exceed cache.max_entry_bytes.",
        value=cache.get("too_large", 0),
    )
    yield CounterMetricFamily(
        "llm_gateway_coalesced_calls",
        "Calls answered by an identical call in flight, without an upstream call.",
        value=cache["coalesced"],
    )


def _shared_store(store: Mapping[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "llm_gateway_shared_store_failures",
        "Operations on the shared store that failed or timed out.",
        value=store["failures"],
    )
    yield CounterMetricFamily(
        "llm_gateway_shared_store_skips",
        "Operations answered without asking the shared store, its guard having paused it"
        " after failures in a row.",
        value=store["skipped"],
    )
    yield GaugeMetricFamily(
        "llm_gateway_shared_store_paused",
        "1 while the gateway has stopped asking the shared store (or is probing it).",
        value=store["open"],
    )
    spends = CounterMetricFamily(
        "llm_gateway_pending_spend",
        "Budget spend and token usage the shared store could not take when they happened:"
        " kept, charged once it answered again, or dropped (no room, or too late).",
        labels=["outcome"],
    )
    for outcome in ("queued", "charged", "dropped"):
        spends.add_metric([outcome], store[outcome])
    yield spends
    yield GaugeMetricFamily(
        "llm_gateway_pending_spend_keys",
        "Budget and token-bucket keys with spend waiting for the shared store.",
        value=store["pending"],
    )
