"""Circuit breaker per deployment: closed → open → half-open with exactly one probe.

Pure state machine; the clock and the random source are parameters. Only failures that
say something about the deployment count (errors that allow failover: 5xx, 429,
timeouts, connect failures, bad credentials); caller mistakes, cancellations and
deadlines do not. Each time it opens, the cool-down is drawn uniformly within
±`jitter` of its nominal length, so that replicas which saw the same outage do not all
probe at the same moment.

With `shared`, replicas learn together (shared_breakers.py): the hooks `on_open` and
`on_close` tell the shared store when this breaker opens or closes, `open_from_peer`
opens it for the time another replica published, and `hold` keeps it from probing while
another replica probes.

Beside the circuit, a deployment may be on a quota cool-down: its provider said the
account is out of quota (OpenAI `insufficient_quota`, Anthropic billing), which no
retry or probe can change soon. No call goes to it until the cool-down ends; then calls
flow again, and the next quota answer starts a new one.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or

MAX_TRANSITIONS = 20


class State(enum.Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True)
class BreakerSettings:
    enabled: bool = True
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    minimum_calls: int = 20
    window: float = 30.0
    cool_down: float = 5.0
    max_cool_down: float = 300.0
    jitter: float = 0.2  # each cool-down is nominal x uniform(1 - jitter, 1 + jitter)
    shared: bool = False  # openings are published to, and read from, the other replicas

    @classmethod
    def from_config(cls, config: config_pb2.BreakerConfig) -> BreakerSettings:
        return cls(
            enabled=not config.disabled,
            consecutive_failures=(
                config.consecutive_failures if config.HasField("consecutive_failures") else 5
            ),
            failure_rate=config.failure_rate if config.HasField("failure_rate") else 0.5,
            minimum_calls=config.minimum_calls if config.HasField("minimum_calls") else 20,
            window=seconds_or(config, "window", 30.0),
            cool_down=seconds_or(config, "cool_down", 5.0),
            max_cool_down=seconds_or(config, "max_cool_down", 300.0),
            jitter=config.cool_down_jitter if config.HasField("cool_down_jitter") else 0.2,
            shared=config.shared and not config.disabled,
        )


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float],
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._uniform = uniform
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.times_opened = 0
        self.transitions: collections.deque[str] = collections.deque(maxlen=MAX_TRANSITIONS)
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque()
        self._open_until = 0.0
        self._cool_down = settings.cool_down
        self._probe_out = False
        self._quota_until = 0.0
        self.opened_by_peer = False
        # Called with the cool-down when this breaker opens, and when it closes again.
        self.on_open: Callable[[float], None] | None = None
        self.on_close: Callable[[], None] | None = None

    def _move(self, state: State) -> None:
        if state is not self.state:
            self.transitions.append(f"{self.state.value}->{state.value}")
            self.state = state

    def open_remaining(self) -> float:
        if self.state is State.OPEN:
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def quota_remaining(self) -> float:
        """Time left of the deployment's quota cool-down (0 when there is none)."""
        return max(0.0, self._quota_until - self._clock())

    def quota_exhausted(self, cool_down: float) -> None:
        """The provider said the account is out of quota: no call for `cool_down`
        seconds. Not a circuit failure; the probe it may have been is released."""
        self._probe_out = False
        self._quota_until = max(self._quota_until, self._clock() + cool_down)

    def allow(self) -> bool:
        """May a call go to this deployment now? In half-open, only one probe may."""
        if not self.settings.enabled or self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self._clock() < self._open_until:
                return False
            self._move(State.HALF_OPEN)
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def release(self) -> None:
        """The call that was let through ended without a verdict (cancelled, caller
        error): a later call may probe instead."""
        self._probe_out = False

    def success(self) -> None:
        self._probe_out = False
        self.consecutive_failures = 0
        self._record(ok=True)
        if self.state is State.HALF_OPEN:
            self._cool_down = self.settings.cool_down
            self._outcomes.clear()
            self._move(State.CLOSED)
            if self.on_close is not None:
                self.on_close()

    def failure(self) -> None:
        self._probe_out = False
        self.consecutive_failures += 1
        self._record(ok=False)
        if not self.settings.enabled:
            return
        if self.state is State.HALF_OPEN:
            self._cool_down = min(self._cool_down * 2, self.settings.max_cool_down)
            self._open()
        elif self.state is State.CLOSED and self._should_open():
            self._open()

    def _open(self) -> None:
        jitter = self.settings.jitter
        spread = self._uniform(1.0 - jitter, 1.0 + jitter) if jitter > 0 else 1.0
        self._open_until = self._clock() + self._cool_down * spread
        self.times_opened += 1
        self.opened_by_peer = False
        self._move(State.OPEN)
        if self.on_open is not None:
            self.on_open(self._cool_down * spread)

    def open_from_peer(self, remaining: float) -> None:
        """Another replica opened this deployment's breaker, for `remaining` seconds
        more: no call goes to it here either until then (its probe, if out, still
        reports). Published openings are not published again."""
        if not self.settings.enabled or remaining <= 0:
            return
        until = self._clock() + remaining
        if self.state is State.OPEN and until <= self._open_until:
            return
        if self.state is not State.OPEN:
            self.times_opened += 1
        self._open_until = until
        self.opened_by_peer = True
        self._move(State.OPEN)

    def peer_closed(self) -> None:
        """The replica whose opening this breaker follows closed it again: the next
        call here may probe (within the one probe all replicas share)."""
        if self.state is State.OPEN and self.opened_by_peer:
            self._open_until = min(self._open_until, self._clock())

    def hold(self, remaining: float) -> None:
        """Another replica is probing, for up to `remaining` seconds: no call, and no
        probe of this replica's own, until then. Not an opening of its own."""
        self._probe_out = False
        if self.state is State.HALF_OPEN and remaining > 0:
            self._open_until = self._clock() + remaining
            self.opened_by_peer = False  # the probe's end, not a peer's close, ends it
            self._move(State.OPEN)

    def _record(self, ok: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, ok))
        while self._outcomes and self._outcomes[0][0] <= now - self.settings.window:
            self._outcomes.popleft()

    def _should_open(self) -> bool:
        if self.consecutive_failures >= self.settings.consecutive_failures:
            return True
        calls = len(self._outcomes)
        if calls < self.settings.minimum_calls:
            return False
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return failures / calls >= self.settings.failure_rate
