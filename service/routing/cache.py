"""The exact response cache: whole Chat and Embed responses, kept for an alias's TTL,
bounded in entries and bytes (least recently used go first).

The key is a hash of the exact request (labels aside: they describe the caller, not
the question), the caller's tenant unless tenants share the cache, and the models the
caller may use (which decide the fallbacks, and so the answer). Entries are stored as
serialized bytes: a hit is a fresh message, never one another call may change.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from service.auth.identity import Identity

M = TypeVar("M", bound=Message)
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def cache_key(request: Message, identity: Identity, shared_between_tenants: bool) -> str:
    """The key of a request: the same for requests that must get the same answer."""
    question = type(request)()
    question.CopyFrom(request)
    if question.DESCRIPTOR.fields_by_name.get("labels") is not None:
        question.ClearField("labels")
    digest = hashlib.sha256()
    digest.update(type(request).DESCRIPTOR.full_name.encode())
    digest.update(b"\0" + (b"" if shared_between_tenants else identity.tenant.encode()))
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
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.shared_between_tenants = shared_between_tenants
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

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
        }

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

    def put(self, key: str, response: Message, ttl: float) -> None:
        payload = response.SerializeToString()
        if len(payload) > self.max_bytes or ttl <= 0:
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
