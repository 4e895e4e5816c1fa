"""Retry policy maths and the per-provider retry budget. Pure (clock and randomness
are parameters)."""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or

# Failures that say as much about the request as about the deployment: tried again on
# the same deployment at most this many times in all, whatever max_attempts says.
ATTEMPTS_BY_REASON = {"UPSTREAM_EMPTY_STREAM": 2}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    multiplier: float = 2.0
    max_retry_after: float = 30.0
    min_attempt_time: float = 0.1

    @classmethod
    def from_config(cls, config: config_pb2.RetryConfig) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts if config.HasField("max_attempts") else 3,
            initial_backoff=seconds_or(config, "initial_backoff", 0.5),
            max_backoff=seconds_or(config, "max_backoff", 8.0),
            multiplier=config.multiplier if config.HasField("multiplier") else 2.0,
            max_retry_after=seconds_or(config, "max_retry_after", 30.0),
            min_attempt_time=seconds_or(config, "min_attempt_time", 0.1),
        )

    def attempts_for(self, reason: str) -> int:
        """Attempts on one deployment for a failure with this ErrorInfo reason."""
        return min(self.max_attempts, ATTEMPTS_BY_REASON.get(reason, self.max_attempts))

    def backoff(
        self, retry: int, uniform: Callable[[float, float], float] = random.uniform
    ) -> float:
        """Full jitter: a uniform draw in [0, min(cap, initial * multiplier^(retry-1))].

        `retry` counts from 1 (the wait before the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return uniform(0.0, ceiling)

    def delay(
        self,
        retry: int,
        retry_after: float | None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float | None:
        """The wait before retry number `retry`, or None when the upstream asks for a
        longer wait than we are willing to give (go to the fallback instead)."""
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        jittered = self.backoff(retry, uniform)
        return max(jittered, retry_after or 0.0)


class RetryBudget:
    """Retries allowed in a sliding window: at least `min_per_second * window`, and
    otherwise `ratio` of the calls seen, so that an outage cannot multiply load."""

    def __init__(
        self, ratio: float, min_per_second: float, window: float, clock: Callable[[], float]
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._clock = clock
        self._calls: collections.deque[float] = collections.deque()
        self._retries: collections.deque[float] = collections.deque()

    @classmethod
    def from_config(
        cls, config: config_pb2.RetryBudgetConfig, clock: Callable[[], float]
    ) -> RetryBudget:
        return cls(
            ratio=config.ratio if config.HasField("ratio") else 0.2,
            min_per_second=(
                config.min_retries_per_second if config.HasField("min_retries_per_second") else 1.0
            ),
            window=seconds_or(config, "window", 10.0),
            clock=clock,
        )

    def _trim(self, now: float) -> None:
        for times in (self._calls, self._retries):
            while times and times[0] <= now - self.window:
                times.popleft()

    def record_call(self) -> None:
        """A first attempt of a call (not a retry)."""
        now = self._clock()
        self._trim(now)
        self._calls.append(now)

    def try_spend(self) -> bool:
        """Takes one retry from the budget; False when it is spent."""
        now = self._clock()
        self._trim(now)
        allowed = max(self.min_per_second * self.window, self.ratio * len(self._calls))
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True
