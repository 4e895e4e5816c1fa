"""A breaker on the shared store: after a few failures in a row, stop asking it for a
pause, and answer at once as if it had failed; then let one operation probe it.

A store that hangs (a network partition, not a refusal) costs its whole timeout per
operation; behind the guard it costs that only `failures_to_pause` times, then once per
pause. Pure state machine; the clock is a parameter.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_FAILURES_TO_PAUSE = 3
DEFAULT_PAUSE = 1.0


class GuardState(enum.Enum):
    CLOSED = "CLOSED"  # every operation goes to the store
    OPEN = "OPEN"  # none does, until the pause ends
    HALF_OPEN = "HALF_OPEN"  # one probe is out; the others are skipped


@dataclass(frozen=True)
class GuardSettings:
    failures_to_pause: int = DEFAULT_FAILURES_TO_PAUSE
    pause: float = DEFAULT_PAUSE


class StoreGuard:
    def __init__(self, settings: GuardSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self.state = GuardState.CLOSED
        self.consecutive_failures = 0
        self.failures = 0  # operations that failed or timed out
        self.skipped = 0  # operations answered without asking the store
        self.times_paused = 0
        self._paused_until = 0.0
        self._probe_out = False

    def allow(self) -> bool:
        """May an operation go to the store now? False counts a skip."""
        if self.state is GuardState.OPEN and self._clock() >= self._paused_until:
            self.state = GuardState.HALF_OPEN
        if self.state is GuardState.CLOSED:
            return True
        if self.state is GuardState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        self.skipped += 1
        return False

    def success(self) -> None:
        self._probe_out = False
        self.consecutive_failures = 0
        self.state = GuardState.CLOSED

    def failure(self) -> None:
        self._probe_out = False
        self.failures += 1
        self.consecutive_failures += 1
        if (
            self.state is GuardState.HALF_OPEN
            or self.consecutive_failures >= self.settings.failures_to_pause
        ):
            self.state = GuardState.OPEN
            self._paused_until = self._clock() + self.settings.pause
            self.times_paused += 1

    def release(self) -> None:
        """An operation that was let through ended without a verdict (cancelled)."""
        self._probe_out = False

    def paused_remaining(self) -> float:
        if self.state is GuardState.OPEN:
            return max(0.0, self._paused_until - self._clock())
        return 0.0

    def stats(self) -> dict[str, int]:
        return {
            "failures": self.failures,
            "skipped": self.skipped,
            "paused": self.times_paused,
            "open": int(self.state is not GuardState.CLOSED),
        }
