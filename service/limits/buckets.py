"""Token buckets for requests and tokens per minute. Pure: state in, state out, the
time is a parameter.

A bucket holds up to `burst` units and refills at `per_second` units a second. A
limit of N per minute is `Rate.per_minute(N)`: N units at once from a full bucket,
then one more every 60/N seconds.

The level may go below zero ("debt"): a tokens-per-minute bucket is charged an
estimate before the call and the difference to the real usage afterwards, and a
call that used more than estimated delays the calls after it until the debt is
refilled. A take larger than the whole burst (one call estimated above the
per-minute allowance) fits only a full bucket, and leaves it in debt, so that such a
call is slow rather than impossible.
"""

from __future__ import annotations

from dataclasses import dataclass

# Float slack when comparing levels, so that N takes of 1 from a bucket refilled for
# exactly N units are not refused over a rounding error.
EPSILON = 1e-9


@dataclass(frozen=True)
class Rate:
    """Refill speed and capacity of a bucket."""

    per_second: float
    burst: float

    @classmethod
    def per_minute(cls, amount: float) -> Rate:
        """`amount` units a minute, all of them usable at once."""
        return cls(per_second=amount / 60.0, burst=float(amount))


@dataclass(frozen=True)
class BucketState:
    """The level at clock time `updated`; negative is debt."""

    level: float
    updated: float


@dataclass(frozen=True)
class Decision:
    """Whether a take was allowed; when refused, the wait until it would fit."""

    allowed: bool
    retry_after: float = 0.0


def full(rate: Rate, now: float) -> BucketState:
    """A bucket seen for the first time."""
    return BucketState(level=rate.burst, updated=now)


def refill(state: BucketState | None, rate: Rate, now: float) -> BucketState:
    """The state at `now`. A clock that goes backwards refills nothing."""
    if state is None:
        return full(rate, now)
    elapsed = max(0.0, now - state.updated)
    level = min(rate.burst, state.level + elapsed * rate.per_second)
    return BucketState(level=level, updated=max(now, state.updated))


def needed(amount: float, rate: Rate) -> float:
    """The level a take of `amount` needs: the amount, or a full bucket when the
    amount is more than the bucket holds."""
    return min(amount, rate.burst)


def take(
    state: BucketState | None, amount: float, rate: Rate, now: float
) -> tuple[BucketState, Decision]:
    """Takes `amount` when it fits; otherwise changes nothing but the refill and says
    how long until it would fit (assuming nothing else is taken meanwhile)."""
    current = refill(state, rate, now)
    need = needed(amount, rate)
    if current.level + EPSILON >= need:
        return BucketState(current.level - amount, current.updated), Decision(allowed=True)
    wait = (need - current.level) / rate.per_second if rate.per_second > 0 else float("inf")
    return current, Decision(allowed=False, retry_after=wait)


def adjust(state: BucketState | None, delta: float, rate: Rate, now: float) -> BucketState:
    """Charges `delta` more (positive: may go into debt) or gives `-delta` back
    (negative: never above the burst)."""
    current = refill(state, rate, now)
    level = min(rate.burst, current.level - delta)
    return BucketState(level=level, updated=current.updated)


def is_full(state: BucketState, rate: Rate, now: float) -> bool:
    """A full bucket is the same as no bucket: a store may forget it."""
    return refill(state, rate, now).level + EPSILON >= rate.burst
