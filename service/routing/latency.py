"""Recent latency of each deployment, as the lowest-latency strategy sees it: a
decaying average (EWMA) of its attempts, time to the first chunk for streams.

A failed attempt counts as a slow one (at least FAILURE_FLOOR seconds, and at least
twice the deployment's average), so that a failing deployment loses its place even
before its circuit opens. Pure: the samples are given, nothing is timed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

ALPHA = 0.3  # weight of the newest sample: about the last 5 attempts count
FAILURE_FLOOR = 1.0  # seconds a failed attempt counts for, at least
EXPLORATION = 0.05  # share of calls sent to a deployment other than the fastest


class LatencyAverages:
    """EWMA of attempt latency per deployment key, in seconds."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self._alpha = alpha
        self._averages: dict[str, float] = {}

    def observe(self, key: str, seconds: float, ok: bool = True) -> None:
        current = self._averages.get(key)
        if not ok:
            seconds = max(seconds, FAILURE_FLOOR, 2 * (current or 0.0))
        if current is None:
            self._averages[key] = seconds
        else:
            self._averages[key] = self._alpha * seconds + (1 - self._alpha) * current

    def average(self, key: str) -> float | None:
        """None before the deployment's first attempt."""
        return self._averages.get(key)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in sorted(self._averages.items()))
        return f"LatencyAverages({shown})"


def lowest_latency_order(
    averages: Sequence[float | None],
    uniform: Callable[[], float],
    exploration: float = EXPLORATION,
) -> list[int]:
    """Indices fastest first. Deployments not measured yet come first (so each is
    tried); otherwise, with probability `exploration`, one of the others is moved to
    the front, so that a deployment that recovered gets a chance to show it."""
    order = sorted(
        range(len(averages)),
        key=lambda index: (averages[index] is not None, averages[index] or 0.0, uniform()),
    )
    if len(order) > 1 and averages[order[0]] is not None and uniform() < exploration:
        others = order[1:]
        picked = others[min(int(uniform() * len(others)), len(others) - 1)]
        order.remove(picked)
        order.insert(0, picked)
    return order
