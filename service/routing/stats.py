"""Per-provider counters since start-up, reported by GetProviderStats."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import duration_pb2
from llmgateway.v1 import models_pb2

from service.providers.rate_limit_headers import KINDS
from service.routing.breaker import CircuitBreaker, State
from service.routing.fleet_stats import FleetStats, Outcome, RecentView
from service.routing.headroom import Headroom

__all__ = ["Outcome", "StatsBook"]


@dataclass
class _Counters:
    kind: str
    requests: int = 0
    successes: int = 0
    failures: int = 0
    cancelled: int = 0
    retries: int = 0
    retries_denied: int = 0
    latency_total: float = 0.0

    @property
    def finished(self) -> int:
        return self.successes + self.failures


class StatsBook:
    """Counts attempts per provider. Single event loop: no locks needed."""

    def __init__(
        self,
        provider_kinds: dict[str, str],
        clock: Callable[[], float] = time.monotonic,
        missing_keys: Mapping[str, str] | None = None,
        missing_key_deployments: Iterable[str] = (),
    ) -> None:
        self._counters = {name: _Counters(kind) for name, kind in provider_kinds.items()}
        # Providers left out because their key variable is unset: name -> kind.
        self.missing_keys = dict(missing_keys or {})
        for name, kind in self.missing_keys.items():
            self._counters.setdefault(name, _Counters(kind))
        self.fleet = FleetStats(clock)
        self._missing_key_deployments = frozenset(missing_key_deployments)

    def started(self, provider: str) -> None:
        self._counters[provider].requests += 1

    def retried(self, provider: str) -> None:
        self._counters[provider].retries += 1

    def retry_denied(self, provider: str) -> None:
        self._counters[provider].retries_denied += 1

    def finished(self, provider: str, outcome: Outcome, latency: float) -> None:
        counters = self._counters[provider]
        if outcome is Outcome.SUCCESS:
            counters.successes += 1
        elif outcome is Outcome.FAILURE:
            counters.failures += 1
        else:
            counters.cancelled += 1
            return
        counters.latency_total += latency

    def snapshot(
        self,
        only: str = "",
        breakers: Mapping[str, CircuitBreaker] | None = None,
        headroom: Mapping[str, Headroom] | None = None,
    ) -> list[models_pb2.ProviderStats]:
        """Counters per provider, with the circuit state and the rate-limit headroom of
        each deployment (both keyed "provider/upstream-model")."""
        result = []
        for name in sorted(self._counters):
            if only and name != only:
                continue
            counters = self._counters[name]
            average = duration_pb2.Duration()
            if counters.finished:
                average.FromNanoseconds(round(counters.latency_total / counters.finished * 1e9))
            result.append(
                models_pb2.ProviderStats(
                    provider=name,
                    provider_type=counters.kind,
                    requests=counters.requests,
                    successes=counters.successes,
                    failures=counters.failures,
                    cancelled=counters.cancelled,
                    retries=counters.retries,
                    retries_denied=counters.retries_denied,
                    average_latency=average,
                    deployments=_deployments(
                        name,
                        breakers or {},
                        headroom or {},
                        self.fleet,
                        name in self.missing_keys,
                        self._missing_key_deployments,
                    ),
                )
            )
        return result


_STATES = {
    State.CLOSED: models_pb2.CIRCUIT_STATE_CLOSED,
    State.OPEN: models_pb2.CIRCUIT_STATE_OPEN,
    State.HALF_OPEN: models_pb2.CIRCUIT_STATE_HALF_OPEN,
}


def _deployments(
    provider: str,
    breakers: Mapping[str, CircuitBreaker],
    headroom: Mapping[str, Headroom],
    fleet: FleetStats,
    key_missing: bool,
    missing_key_deployments: Iterable[str] = (),
) -> list[models_pb2.DeploymentStats]:
    """Each deployment of `provider` that has a breaker or has been tried, and those
    left out because the provider's key is missing."""
    result = []
    for key in sorted({*breakers, *headroom, *fleet.keys(), *missing_key_deployments}):
        owner, _, model = key.partition("/")
        if owner != provider:
            continue
        stats = models_pb2.DeploymentStats(upstream_model=model, key_missing=key_missing)
        breaker = breakers.get(key)
        if breaker is not None:
            stats.circuit_state = _STATES[breaker.state]
            stats.consecutive_failures = breaker.consecutive_failures
            stats.open_remaining.CopyFrom(_duration(breaker.open_remaining()))
            stats.times_opened = breaker.times_opened
            stats.transitions.extend(breaker.transitions)
            stats.quota_cool_down_remaining.CopyFrom(_duration(breaker.quota_remaining()))
        else:
            stats.circuit_state = models_pb2.CIRCUIT_STATE_CLOSED  # never called yet
        room = headroom.get(key)
        if room is not None:
            stats.rate_limit_headroom.CopyFrom(_headroom(room))
        view = fleet.view(key)
        if view is not None:
            _add_recent(stats, view)
        result.append(stats)
    return result


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(max(0.0, seconds) * 1e9))
    return value


def _headroom(room: Headroom) -> models_pb2.UpstreamRateLimitHeadroom:
    message = models_pb2.UpstreamRateLimitHeadroom(
        available=room.available, available_in=_duration(room.available_in)
    )
    if room.quota is not None:
        message.requests_per_minute = room.quota.requests_per_minute
        message.tokens_per_minute = room.quota.tokens_per_minute
    if room.requests_remaining is not None:
        message.requests_remaining = room.requests_remaining
    if room.tokens_remaining is not None:
        message.tokens_remaining = room.tokens_remaining
    for kind in KINDS:
        window = room.reported.get(kind)
        if window is not None:
            message.reported.add(
                kind=kind, remaining=window.remaining, reset_in=_duration(window.reset_in)
            )
    return message


def _add_recent(stats: models_pb2.DeploymentStats, view: RecentView) -> None:
    stats.recent_calls = view.calls
    stats.success_rate = view.success_rate
    stats.latency_p50.CopyFrom(_duration(view.latency_p50))
    stats.latency_p95.CopyFrom(_duration(view.latency_p95))
    stats.first_chunk_p50.CopyFrom(_duration(view.first_chunk_p50))
    stats.first_chunk_p95.CopyFrom(_duration(view.first_chunk_p95))
    stats.input_tokens = view.input_tokens
    stats.output_tokens = view.output_tokens
    stats.cost_usd = view.cost_usd
