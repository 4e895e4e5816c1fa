"""The exact response cache in the shared Redis store, so that an answer one replica
stored is a hit on every other.

Keys, TTLs and partitions are those of the in-process cache (cache.py): the key is the
same hash, under the store's prefix. An entry is the serialized response compressed
with zlib (level 1: a 4 KiB answer to about 2.3 KiB in a fraction of a millisecond),
behind a one-byte format mark; an entry it cannot read is a miss. An entry larger than
`max_entry_bytes` compressed is not kept.

Bounds across replicas: every store is one Lua script that records the entry in an
index (expiry per entry) and a size table, forgets expired entries, and evicts the
entries nearest their expiry while the cache holds more than `max_entries` entries or
`max_bytes` bytes. The script names the entries it evicts at run time: a standalone
Redis (or one behind Sentinel), not Redis Cluster.

The store failing (or paused by its guard) means no cache, never an error: the lookup
is a miss answered upstream, the answer is not kept, and each such failure is counted.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from service.auth.identity import Identity
from service.routing.cache import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_ENTRY_BYTES,
    cache_key,
)
from service.shared_store.connection import SharedRedis, StoreUnavailable

M = TypeVar("M", bound=Message)
COMPRESSION_LEVEL = 1
_ZLIB = b"z"  # format mark: zlib-compressed serialized response

# KEYS: entry, index (sorted set: member -> expiry in ms), sizes (hash: member -> bytes,
# and the total under '#total'). ARGV: member, payload, ttl ms, max entries, max bytes,
# the prefix of entry keys. Returns {evicted, entries, bytes}.
_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local size = string.len(ARGV[2])
local ttl = tonumber(ARGV[3])
local max_entries = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])
local function forget(m)
  local held = tonumber(redis.call('HGET', KEYS[3], m) or '0')
  redis.call('ZREM', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
  if held > 0 then
    redis.call('HINCRBY', KEYS[3], '#total', -held)
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  forget(m)
end
forget(member)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, member)
redis.call('HSET', KEYS[3], member, size)
local total = redis.call('HINCRBY', KEYS[3], '#total', size)
local evicted = 0
while total > max_bytes or redis.call('ZCARD', KEYS[2]) > max_entries do
  local victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not victim then
    break
  end
  forget(victim)
  redis.call('DEL', ARGV[6] .. victim)
  total = tonumber(redis.call('HGET', KEYS[3], '#total') or '0')
  evicted = evicted + 1
end
return {evicted, redis.call('ZCARD', KEYS[2]), total}
"""


def encode(response: Message) -> bytes:
    return _ZLIB + zlib.compress(response.SerializeToString(), COMPRESSION_LEVEL)


def decode(payload: bytes, message_type: type[M]) -> M | None:
    """The response in `payload`; None when it is not one this version wrote."""
    if not payload.startswith(_ZLIB):
        return None
    try:
        return message_type.FromString(zlib.decompress(payload[len(_ZLIB) :]))
    except (zlib.error, DecodeError):
        return None


class RedisResponseCache:
    def __init__(
        self,
        shared: SharedRedis,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        shared_between_tenants: bool = False,
        share_without_tenant: bool = False,
    ) -> None:
        self.shared = shared
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.shared_between_tenants = shared_between_tenants
        self.share_without_tenant = share_without_tenant
        self._put = shared.client.register_script(_PUT)
        self._entry_prefix = shared.key("cache:e:")
        self._index = shared.key("cache:index")
        self._sizes = shared.key("cache:sizes")
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.too_large = 0
        self.unavailable = 0  # lookups and stores the store did not answer
        self._entries = 0  # as the store last said (every replica's)
        self._bytes = 0

    def key(self, request: Message, identity: Identity) -> str:
        return cache_key(request, identity, self.shared_between_tenants, self.share_without_tenant)

    async def lookup(self, key: str, message_type: type[M]) -> M | None:
        try:
            payload = await self.shared.run(
                lambda: self.shared.client.get(self._entry_prefix + key)
            )
        except StoreUnavailable:
            self.unavailable += 1
            return None
        found = decode(payload, message_type) if isinstance(payload, bytes) else None
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    async def store(self, key: str, response: Message, ttl: float) -> None:
        if ttl <= 0:
            return
        payload = encode(response)
        if len(payload) > min(self.max_entry_bytes, self.max_bytes):
            self.too_large += 1
            return
        try:
            evicted, entries, total = await self.shared.run(
                lambda: self._put(
                    keys=[self._entry_prefix + key, self._index, self._sizes],
                    args=[
                        key,
                        payload,
                        max(1, round(ttl * 1000)),
                        self.max_entries,
                        self.max_bytes,
                        self._entry_prefix,
                    ],
                )
            )
        except StoreUnavailable:
            self.unavailable += 1
            return
        self.evictions += int(evicted)
        self._entries = int(entries)
        self._bytes = int(total)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "entries": self._entries,
            "bytes": self._bytes,
            "too_large": self.too_large,
            "unavailable": self.unavailable,
        }
