"""A LimitStore in Redis, so that limits and budgets hold across replicas.

Each operation is one Lua script on one key, atomic on the server. Buckets are timed
by the Redis server's clock (`TIME`), never by the replicas' own, which may differ;
the `now` the limiter passes is ignored. The scripts are the transforms of
service.limits.buckets written again in Lua (tests hold them to the same edges).
Numbers cross the wire as strings: Redis turns a Lua number it returns into an integer.

A bucket key expires when its bucket would be full again (a full bucket and no bucket
are the same), at most a day later: a debt larger than a day's refill is forgiven then.
A spend key lives at least as long as it was asked to.

While the server does not answer, operations fail at once for `RETRY_AFTER_FAILURE`
seconds instead of each waiting out the timeout, so that an outage of the store adds
no latency to the calls the limiter lets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as redis
from llmgateway.config.v1 import config_pb2
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.config_base import seconds_or
from service.limits.buckets import EPSILON, Decision, Rate
from service.limits.store import LimitStoreError

DEFAULT_PREFIX = "llmgw:"
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CONNECTIONS = 64
RETRY_AFTER_FAILURE = 1.0

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
    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._clock = clock
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)
        self._add_spend = client.register_script(_ADD_SPEND)
        self._level = client.register_script(_LEVEL)
        self._down_until = 0.0

    @classmethod
    def from_config(
        cls, config: config_pb2.RedisStoreConfig, environ: Mapping[str, str]
    ) -> RedisLimitStore:
        timeout = seconds_or(config, "timeout", DEFAULT_TIMEOUT)
        # Blocking: a burst of calls waits (up to the timeout) for a free connection
        # instead of failing, which would read as an outage and lift the limits.
        pool = redis.BlockingConnectionPool.from_url(
            environ[config.url_env],
            max_connections=(
                config.max_connections
                if config.HasField("max_connections")
                else DEFAULT_MAX_CONNECTIONS
            ),
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # The limiter decides what a failure means; a retry here would double the wait.
            retry=Retry(NoBackoff(), 0),
        )
        return cls(redis.Redis(connection_pool=pool), config.key_prefix or DEFAULT_PREFIX)

    async def _run(self, operation: Callable[[], Any], gate: bool = True) -> Any:
        """Runs one operation. Within a moment of a failure, a gated operation fails at
        once; giving back (not gated) always tries, so that a call refused or let
        through by a failure elsewhere does not keep what it took."""
        if gate and self._clock() < self._down_until:
            raise LimitStoreError("the limit store failed moments ago")
        try:
            return await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + RETRY_AFTER_FAILURE
            # The exception's text may hold the URL; its type is enough to act on.
            raise LimitStoreError(f"the limit store failed ({type(exc).__name__})") from None

    async def take(self, key: str, amount: float, rate: Rate, now: float) -> Decision:
        allowed, wait = await self._run(
            lambda: self._take(keys=[self._prefix + key], args=[repr(amount), *_rate_args(rate)])
        )
        if int(allowed):
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after=float(wait))

    async def adjust(self, key: str, delta: float, rate: Rate, now: float) -> None:
        await self._run(
            lambda: self._adjust(keys=[self._prefix + key], args=[repr(delta), *_rate_args(rate)]),
            gate=delta >= 0,
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

    async def reachable(self) -> bool:
        try:
            await self._run(self._client.ping)
        except LimitStoreError:
            return False
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


def _rate_args(rate: Rate) -> list[str]:
    return [repr(rate.per_second), repr(rate.burst)]
