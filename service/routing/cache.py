"""The exact response cache: whole Chat and Embed responses, kept for an alias's TTL,
bounded in entries and bytes (least recently used go first).

The key is a hash of the exact request (labels aside: they describe the caller, not
the question), the caller's partition, and the models the caller may use (which decide
the fallbacks, and so the answer). Entries are stored as serialized bytes: a hit is a
fresh message, never one another call may change.

Partitions keep one caller's answers from another's. A tenant or subject is only a name
its issuer vouches for, so each partition names the issuer too: the callers of one tenant
(issuer and tenant claim) share one; a caller whose token has no tenant has one of its
own (issuer and subject), or shares one with the other tenant-less callers of its issuer
when `share_without_tenant`; with `shared_between_tenants`, every caller shares one.

`Cache` is what the cache path (cached.py) needs; `ResponseCache` keeps entries in this
process, redis_cache.RedisResponseCache in the store replicas share.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from service.auth.identity import Identity

M = TypeVar("M", bound=Message)
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024


class Cache(Protocol):
    def key(self, request: Message, identity: Identity) -> str:
        """The key of `request` asked by `identity`, in this cache's partitioning."""
        ...

    async def lookup(self, key: str, message_type: type[M]) -> M | None:
        """The entry under `key`, a fresh message; None when there is none (or the
        cache cannot answer: never an error)."""
        ...

    async def store(self, key: str, response: Message, ttl: float) -> None:
        """Keeps `response` under `key` for `ttl` seconds, when it fits."""
        ...

    def stats(self) -> dict[str, int]:
        """hits, misses, evictions, entries, bytes, too_large, unavailable."""
        ...


def partition(
    identity: Identity, shared_between_tenants: bool, share_without_tenant: bool = False
) -> tuple[str, ...]:
    """The callers whose answers `identity` may be given (see the module docstring)."""
    if shared_between_tenants:
        return ("shared",)
    if identity.tenant:
        return ("tenant", identity.issuer, identity.tenant)
    if share_without_tenant:
        return ("issuer", identity.issuer)
    return ("subject", identity.issuer, identity.subject)


def cache_key(
    request: Message,
    identity: Identity,
    shared_between_tenants: bool,
    share_without_tenant: bool = False,
) -> str:
    """The key of a request: the same for requests that must get the same answer."""
    question = type(request)()
    question.CopyFrom(request)
    if question.DESCRIPTOR.fields_by_name.get("labels") is not None:
        question.ClearField("labels")
    digest = hashlib.sha256()
    digest.update(type(request).DESCRIPTOR.full_name.encode())
    for part in partition(identity, shared_between_tenants, share_without_tenant):
        encoded = part.encode()
        digest.update(b"\0%d:" % len(encoded) + encoded)  # length-prefixed: unambiguous
    allowed = "*" if identity.models is None else "\x1f".join(sorted(identity.models))
    digest.update(b"\0" + allowed.encode() + b"\0")
    digest.update(question.SerializeToString(deterministic=True))
    return digest.hexdigest()


@dataclass
class _Entry:
    payload: bytes
    expires: float


class ResponseCache:
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        shared_between_tenants: bool = False,
        clock: Callable[[], float] = time.monotonic,
        share_without_tenant: bool = False,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.shared_between_tenants = shared_between_tenants
        self.share_without_tenant = share_without_tenant
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.too_large = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "too_large": self.too_large,
            "unavailable": 0,
        }

    def key(self, request: Message, identity: Identity) -> str:
        """The key of `request` asked by `identity`, in this cache's partitioning."""
        return cache_key(request, identity, self.shared_between_tenants, self.share_without_tenant)

    def get(self, key: str, message_type: type[M]) -> M | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= self._clock():
            self._remove(key)
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return message_type.FromString(entry.payload)

    async def lookup(self, key: str, message_type: type[M]) -> M | None:
        return self.get(key, message_type)

    async def store(self, key: str, response: Message, ttl: float) -> None:
        self.put(key, response, ttl)

    def put(self, key: str, response: Message, ttl: float) -> None:
        payload = response.SerializeToString()
        if ttl <= 0:
            return
        if len(payload) > min(self.max_bytes, self.max_entry_bytes):
            self.too_large += 1
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(payload, self._clock() + ttl)
        self._bytes += len(payload)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.payload)
