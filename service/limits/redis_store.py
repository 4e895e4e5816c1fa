"""A LimitStore in Redis, so that limits and budgets hold across replicas.

Each operation is one Lua script on one key, atomic on the server. Buckets are timed
by the Redis server's clock (`TIME`), never by the replicas' own, which may differ;
the `now` the limiter passes is ignored. The scripts are the transforms of
service.limits.buckets written again in Lua (tests hold them to the same edges).
Numbers cross the wire as strings: Redis turns a Lua number it returns into an integer.

A bucket key expires when its bucket would be full again (a full bucket and no bucket
are the same), at most a day later: a debt larger than a day's refill is forgiven then.
A spend key lives at least as long as it was asked to.

The connection and its guard are the shared store's (service/shared_store): while the
server fails, operations fail at once (after a few failures in a row) instead of each
waiting out the timeout, so that an outage of the store adds no latency to the calls
the limiter lets through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from service.limits.buckets import EPSILON, Decision, Rate
from service.limits.store import LimitStoreError
from service.shared_store.connection import SharedRedis, StoreUnavailable

# Shared by both bucket scripts: the bucket refilled to the server's time.
_REFILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local per_second = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level = tonumber(state[1])
local updated = tonumber(state[2])
if level == nil or updated == nil then
  level = burst
  updated = now
end
level = math.min(burst, level + math.max(0, now - updated) * per_second)
updated = math.max(now, updated)
local function save()
  redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level),
             'updated', string.format('%.17g', updated))
  if per_second > 0 then
    -- Milliseconds until full, plus a second; at most a day, written as an integer.
    local until_full = math.ceil((burst - level) / per_second * 1000) + 1000
    until_full = math.min(86400000, math.max(1000, until_full))
    redis.call('PEXPIRE', KEYS[1], string.format('%d', until_full))
  end
end
"""

# ARGV: amount, per_second, burst. Returns {allowed, retry_after}.
_TAKE = (
    _REFILL
    + f"""
local amount = tonumber(ARGV[1])
local need = math.min(amount, burst)
if level + {EPSILON} >= need then
  level = level - amount
  save()
  return {{1, '0'}}
end
if per_second <= 0 then
  return {{0, 'inf'}}
end
return {{0, string.format('%.17g', (need - level) / per_second)}}
"""
)

# ARGV: delta, per_second, burst.
_ADJUST = (
    _REFILL
    + """
level = math.min(burst, level - tonumber(ARGV[1]))
save()
return 1
"""
)

# ARGV: (unused), per_second, burst. Returns the level, changing nothing.
_LEVEL = (
    _REFILL
    + """
return string.format('%.17g', level)
"""
)

# ARGV: nanos, ttl in milliseconds. Returns the new total.
_ADD_SPEND = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return total
"""


class RedisLimitStore:
    def __init__(self, shared: SharedRedis) -> None:
        self.shared = shared
        client = shared.client
        self._client = client
        self._prefix = shared.prefix
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)
        self._add_spend = client.register_script(_ADD_SPEND)
        self._level = client.register_script(_LEVEL)

    async def _run(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Runs one operation through the shared store's guard."""
        try:
            return await self.shared.run(operation)
        except StoreUnavailable as error:
            raise LimitStoreError(str(error)) from None

    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        allowed, wait = await self._run(
            lambda: self._take(keys=[self._prefix + key], args=[repr(amount), *_rate_args(rate)])
        )
        if int(allowed):
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after=float(wait))

    async def adjust(self, key: str, delta: float, rate: Rate, now: float) -> None:
        await self._run(
            lambda: self._adjust(keys=[self._prefix + key], args=[repr(delta), *_rate_args(rate)])
        )

    async def level(self, key: str, rate: Rate, now: float) -> float:
        value = await self._run(
            lambda: self._level(keys=[self._prefix + key], args=["0", *_rate_args(rate)])
        )
        return float(value)

    async def spent(self, key: str) -> int:
        value = await self._run(lambda: self._client.get(self._prefix + key))
        return int(value) if value is not None else 0

    async def add_spend(self, key: str, nanos: int, ttl: float) -> int:
        total = await self._run(
            lambda: self._add_spend(
                keys=[self._prefix + key], args=[nanos, max(1, int(ttl * 1000))]
            )
        )
        return int(total)

    async def aclose(self) -> None:
        await self.shared.aclose()


def _rate_args(rate: Rate) -> list[str]:
    return [repr(rate.per_second), repr(rate.burst)]
