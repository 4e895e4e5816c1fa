"""Per-deployment statistics for GetProviderStats: the recent window of attempts
(calls, success rate, latency and time-to-first-chunk percentiles) and the tokens and
cost served since start-up.

The recent window is the last WINDOW_SECONDS (5 minutes), and at most the last
MAX_SAMPLES (1000) attempts of each deployment, whichever is fewer. A unary attempt's
latency is to its whole answer; a stream's is to its last chunk, and its time to the
first chunk is kept apart. Cancelled attempts say nothing about the deployment and are
not counted. Single event loop: no locks.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from llmgateway.v1 import route_pb2

from service.providers.base import Deployment

WINDOW_SECONDS = 300.0
MAX_SAMPLES = 1000


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values): the smallest value with at least
    `share` of the values at or below it."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass
class DeploymentWindow:
    attempts: collections.deque[tuple[float, bool, float]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_SAMPLES)
    )  # (when, ok, seconds)
    first_chunks: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_SAMPLES)
    )  # (when, seconds)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class RecentView:
    calls: int
    success_rate: float
    latency_p50: float
    latency_p95: float
    first_chunk_p50: float
    first_chunk_p95: float
    input_tokens: int
    output_tokens: int
    cost_usd: float


class FleetStats:
    """Statistics per deployment key ("provider/upstream-model")."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, DeploymentWindow] = {}

    def _window(self, deployment: Deployment) -> DeploymentWindow:
        return self._windows.setdefault(deployment.key, DeploymentWindow())

    def attempt(self, deployment: Deployment, outcome: Outcome, seconds: float) -> None:
        if outcome is not Outcome.CANCELLED:
            ok = outcome is Outcome.SUCCESS
            self._window(deployment).attempts.append((self._clock(), ok, seconds))

    def first_chunk(self, deployment: Deployment, seconds: float) -> None:
        self._window(deployment).first_chunks.append((self._clock(), seconds))

    def usage(self, deployment: Deployment, usage: route_pb2.Usage) -> None:
        window = self._window(deployment)
        window.input_tokens += usage.input_tokens
        window.output_tokens += usage.output_tokens
        window.cost_usd += usage.cost_usd

    def keys(self) -> Iterable[str]:
        return self._windows.keys()

    def view(self, key: str) -> RecentView | None:
        window = self._windows.get(key)
        if window is None:
            return None
        since = self._clock() - WINDOW_SECONDS
        recent = [(ok, s) for at, ok, s in window.attempts if at >= since]
        latencies = [s for _, s in recent]
        firsts = [s for at, s in window.first_chunks if at >= since]
        return RecentView(
            calls=len(recent),
            success_rate=sum(ok for ok, _ in recent) / len(recent) if recent else 0.0,
            latency_p50=percentile(latencies, 0.5),
            latency_p95=percentile(latencies, 0.95),
            first_chunk_p50=percentile(firsts, 0.5),
            first_chunk_p95=percentile(firsts, 0.95),
            input_tokens=window.input_tokens,
            output_tokens=window.output_tokens,
            cost_usd=round(window.cost_usd, 10),
        )
