"""Per-provider counters since start-up, reported by GetProviderStats."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import duration_pb2
from llmgateway.v1 import models_pb2

from service.routing.breaker import CircuitBreaker, State


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


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

    def __init__(self, provider_kinds: dict[str, str]) -> None:
        self._counters = {name: _Counters(kind) for name, kind in provider_kinds.items()}

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
        self, only: str = "", breakers: Mapping[str, CircuitBreaker] | None = None
    ) -> list[models_pb2.ProviderStats]:
        """Counters per provider, with the circuit state of each deployment (breakers are
        keyed "provider/upstream-model")."""
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
                    deployments=_deployments(name, breakers or {}),
                )
            )
        return result


_STATES = {
    State.CLOSED: models_pb2.CIRCUIT_STATE_CLOSED,
    State.OPEN: models_pb2.CIRCUIT_STATE_OPEN,
    State.HALF_OPEN: models_pb2.CIRCUIT_STATE_HALF_OPEN,
}


def _deployments(
    provider: str, breakers: Mapping[str, CircuitBreaker]
) -> list[models_pb2.DeploymentStats]:
    result = []
    for key in sorted(breakers):
        owner, _, model = key.partition("/")
        if owner != provider:
            continue
        breaker = breakers[key]
        remaining = duration_pb2.Duration()
        remaining.FromNanoseconds(round(breaker.open_remaining() * 1e9))
        resting = duration_pb2.Duration()
        resting.FromNanoseconds(round(breaker.quota_remaining() * 1e9))
        result.append(
            models_pb2.DeploymentStats(
                upstream_model=model,
                circuit_state=_STATES[breaker.state],
                consecutive_failures=breaker.consecutive_failures,
                open_remaining=remaining,
                times_opened=breaker.times_opened,
                transitions=list(breaker.transitions),
                quota_cool_down_remaining=resting,
            )
        )
    return result
