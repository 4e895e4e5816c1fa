"""Where limit state lives: the seam between the limiter and its storage.

The limiter needs four operations, each atomic on one key, so that a shared store
(e.g. Redis, one Lua script or INCRBY per operation) can serve several replicas:

- `take`: refill bucket K and take N from it if N fits, else change nothing;
- `adjust`: refill bucket K and charge more (debt allowed) or give back (capped);
- `level`: what bucket K holds now, changing nothing (for statistics);
- `spent`: the spend recorded under K;
- `add_spend`: add to the spend under K, which expires after a while.

Bucket times (`now`) come from the limiter's clock. A store shared by replicas needs
a clock they share: give the limiter `clock=time.time`, or let the store use its
server's time and ignore `now`. Keys are opaque strings chosen by the limiter.

A store that cannot answer raises LimitStoreError.

Several keys are not updated atomically together: the limiter gives back what it
took when a later key refuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from service.limits import buckets
from service.limits.buckets import BucketState, Decision, Rate

# The in-memory store forgets full buckets and expired spends every this many
# operations, so that memory follows the active callers, not every caller ever seen.
SWEEP_EVERY = 1024


class LimitStoreError(Exception):
    """The store could not answer (unreachable, timed out, refused). The limiter decides
    what the call gets; the message never holds credentials."""


class LimitStore(Protocol):
    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        """Atomically: refill bucket `key` to `now` and take `amount` when it fits (an
        amount above the burst fits only a full bucket); when it does not fit, take
        nothing and return the wait until it would."""
        ...

    async def adjust(self, key: str, delta: float, rate: Rate, now: float) -> None:
        """Atomically: refill bucket `key` to `now`, then take `delta` more (positive;
        the level may go below zero) or give `-delta` back (negative; the level never
        goes above the burst)."""
        ...

    async def level(self, key: str, rate: Rate, now: float) -> float:
        """What bucket `key` holds at `now` (a full bucket when there is none; negative
        is debt). Changes nothing."""
        ...

    async def spent(self, key: str) -> int:
        """The spend recorded under `key`, in nano-dollars; 0 when there is none."""
        ...

    async def add_spend(self, key: str, nanos: int, ttl: float) -> int:
        """Atomically adds `nanos` to the spend under `key`, keeps it at least `ttl`
        seconds, and returns the new total."""
        ...


class InMemoryLimitStore:
    """A LimitStore for one process. Its operations never await, so each one is
    atomic under asyncio."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # for spend expiry only
        self._buckets: dict[str, tuple[BucketState, Rate]] = {}
        self._spends: dict[str, tuple[int, float]] = {}
        self._operations = 0

    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        self._tick(now)
        entry = self._buckets.get(key)
        state, decision = buckets.take(entry[0] if entry else None, amount, rate, now)
        self._buckets[key] = (state, rate)
        return decision

    async def adjust(self, key: str, delta: float, rate: Rate, now: float) -> None:
        self._tick(now)
        entry = self._buckets.get(key)
        self._buckets[key] = (buckets.adjust(entry[0] if entry else None, delta, rate, now), rate)

    async def level(self, key: str, rate: Rate, now: float) -> float:
        entry = self._buckets.get(key)
        return buckets.refill(entry[0] if entry else None, rate, now).level

    async def spent(self, key: str) -> int:
        entry = self._spends.get(key)
        if entry is None or entry[1] <= self._clock():
            return 0
        return entry[0]

    async def add_spend(self, key: str, nanos: int, ttl: float) -> int:
        now = self._clock()
        entry = self._spends.get(key)
        if entry is None or entry[1] <= now:
            entry = (0, now)
        total = entry[0] + nanos
        self._spends[key] = (total, max(entry[1], now + ttl))
        return total

    def __len__(self) -> int:
        """Entries held (buckets and spends), for tests and diagnostics."""
        return len(self._buckets) + len(self._spends)

    def _tick(self, now: float) -> None:
        self._operations += 1
        if self._operations % SWEEP_EVERY == 0:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Forgets full buckets (the same as absent ones) and expired spends."""
        self._buckets = {
            key: (state, rate)
            for key, (state, rate) in self._buckets.items()
            if not buckets.is_full(state, rate, now)
        }
        wall = self._clock()
        self._spends = {key: entry for key, entry in self._spends.items() if entry[1] > wall}
