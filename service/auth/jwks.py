"""A JWKS key cache that never blocks the event loop and cannot be made to storm.

Keys are fetched with an async HTTP client, refreshed in the background, looked up by
`kid`. An unknown `kid` refetches the set at most once per `min_refetch` (one fetch at a
time), and unknown kids are remembered for that long, so random kids cannot cause a
fetch storm. A failed fetch keeps the keys already known: the cache stays warm through
a JWKS outage.

A key that a fetch no longer lists is gone at once (`current(kid)` says None), and a
key published again unchanged stays the same object, so that what was verified with it
can tell whether the key it relied on is still there (see verifier.TokenVerifier).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

MAX_UNKNOWN_KIDS = 1024
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024


class JwksCache:
    def __init__(
        self,
        url: str,
        refresh: float,
        min_refetch: float,
        clock: Callable[[], float],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.refresh = refresh
        self.min_refetch = min_refetch
        self._clock = clock
        self._client = client or httpx.AsyncClient(timeout=FETCH_TIMEOUT, trust_env=False)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._entries: dict[str, dict[str, Any]] = {}  # kid → the JWK as published
        self._unknown: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0
        self.failures = 0

    async def start(self) -> None:
        await self._fetch()
        self._task = asyncio.create_task(self._refresh_forever(), name="jwks-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            async with self._lock:
                await self._fetch()

    async def _fetch(self) -> None:
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            entries = _parse(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            self.failures += 1
            log.warning(
                "JWKS fetch failed; keeping the keys already known",
                extra={"fields": {"url": self.url, "error": type(exc).__name__}},
            )
            return
        keys: dict[str, jwt.PyJWK] = {}
        for kid, (entry, key) in entries.items():
            unchanged = self._entries.get(kid) == entry and kid in self._keys
            keys[kid] = self._keys[kid] if unchanged else key
        self._keys = keys
        self._entries = {kid: entry for kid, (entry, _) in entries.items()}
        for kid in keys:
            self._unknown.pop(kid, None)

    def current(self, kid: str) -> jwt.PyJWK | None:
        """The key published under `kid` now, without fetching; None when it is gone."""
        return self._keys.get(kid)

    async def key(self, kid: str) -> jwt.PyJWK | None:
        known = self._keys.get(kid)
        if known is not None:
            return known
        now = self._clock()
        seen = self._unknown.get(kid)
        if seen is not None and now - seen < self.min_refetch:
            return None
        async with self._lock:
            known = self._keys.get(kid)
            if known is None and self._clock() - self._last_fetch >= self.min_refetch:
                await self._fetch()
                known = self._keys.get(kid)
        if known is None:
            self._unknown[kid] = now
            self._unknown.move_to_end(kid)
            while len(self._unknown) > MAX_UNKNOWN_KIDS:
                self._unknown.popitem(last=False)
        return known


def _parse(document: Any) -> dict[str, tuple[dict[str, Any], jwt.PyJWK]]:
    """Signing keys with a `kid`, from a JWKS document, each with its JWK as published
    (keys it cannot use are skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, tuple[dict[str, Any], jwt.PyJWK]] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not entry.get("kid") or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a shared secret has no place in a public key set (key confusion)
        try:
            keys[str(entry["kid"])] = (entry, jwt.PyJWK.from_dict(entry))
        except jwt.PyJWTError:
            continue
    return keys
