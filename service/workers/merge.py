"""Adds up the statistics of several worker processes into the whole server's (pure).

Counts are summed. The average latency is weighted by the attempts each worker
finished. A deployment's circuit breaker is reported as the most open of the workers'
(OPEN, then HALF_OPEN, then CLOSED; among equals, the one with more failures in a row),
with that worker's failures in a row, time left open and transitions; `times_opened` is
summed and the quota cool-down is the longest. Each worker's own view stays visible in
GetProviderStatsResponse.workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmgateway.v1 import models_pb2

_OPENNESS = {
    models_pb2.CIRCUIT_STATE_UNSPECIFIED: 0,
    models_pb2.CIRCUIT_STATE_CLOSED: 1,
    models_pb2.CIRCUIT_STATE_HALF_OPEN: 2,
    models_pb2.CIRCUIT_STATE_OPEN: 3,
}
_SUMMED = ("requests", "successes", "failures", "cancelled", "retries", "retries_denied")


def merge_providers(
    per_worker: Iterable[Sequence[models_pb2.ProviderStats]],
) -> list[models_pb2.ProviderStats]:
    """One ProviderStats per provider name (sorted), adding up every worker's."""
    by_name: dict[str, list[models_pb2.ProviderStats]] = {}
    for providers in per_worker:
        for stats in providers:
            by_name.setdefault(stats.provider, []).append(stats)
    return [_merge_provider(by_name[name]) for name in sorted(by_name)]


def _merge_provider(parts: Sequence[models_pb2.ProviderStats]) -> models_pb2.ProviderStats:
    first = parts[0]
    merged = models_pb2.ProviderStats(provider=first.provider, provider_type=first.provider_type)
    for name in _SUMMED:
        setattr(merged, name, sum(getattr(part, name) for part in parts))
    finished = merged.successes + merged.failures
    if finished:
        weighted = sum(
            part.average_latency.ToNanoseconds() * (part.successes + part.failures)
            for part in parts
        )
        merged.average_latency.FromNanoseconds(round(weighted / finished))
    deployments: dict[str, list[models_pb2.DeploymentStats]] = {}
    for part in parts:
        for deployment in part.deployments:
            deployments.setdefault(deployment.upstream_model, []).append(deployment)
    merged.deployments.extend(_merge_deployment(deployments[m]) for m in sorted(deployments))
    return merged


def _merge_deployment(parts: Sequence[models_pb2.DeploymentStats]) -> models_pb2.DeploymentStats:
    worst = max(parts, key=lambda d: (_OPENNESS[d.circuit_state], d.consecutive_failures))
    merged = models_pb2.DeploymentStats()
    merged.CopyFrom(worst)
    merged.times_opened = sum(part.times_opened for part in parts)
    longest = max(parts, key=lambda d: d.quota_cool_down_remaining.ToNanoseconds())
    merged.quota_cool_down_remaining.CopyFrom(longest.quota_cool_down_remaining)
    return merged


def whole_server(
    replica_id: str, workers: Sequence[models_pb2.GatewayWorkerStats]
) -> models_pb2.GetProviderStatsResponse:
    """The response of a server with several workers: totals over those that answered,
    and every worker's own entry (those that did not answer, marked so), by index."""
    ordered = sorted(workers, key=lambda w: w.worker)
    return models_pb2.GetProviderStatsResponse(
        providers=merge_providers(w.providers for w in ordered if w.answered),
        replica_id=replica_id,
        workers=ordered,
    )
