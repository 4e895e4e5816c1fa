"""OAuth 2.0 access tokens that renew themselves: fetched from a token endpoint when first
needed, renewed before they expire (when half their lifetime, at most five minutes, is
left). Shared by Microsoft Entra ID client credentials (entra.py) and Google service
accounts (google_auth.py); a subclass says only what to post and what to call the issuer.

One fetch at a time, in a task of its own: calls that have no valid token wait for it
(a call that gives up does not stop it); calls that have one keep using it while the
renewal runs in the background. A failed fetch is remembered for a moment, so that
waiting calls do not each ask again. A renewal that fails while the token is still
valid keeps the token; a token the upstream rejects is dropped. Secrets, assertions and
tokens are never logged.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import httpx

from service.errors import GatewayError

log = logging.getLogger(__name__)

RENEW_MARGIN = 300.0  # seconds before expiry, at most
TOKEN_TIMEOUT = 10.0
FAILURE_MEMORY = 2.0  # seconds a failed fetch is answered without asking again


class RenewingTokenSource(abc.ABC):
    """Bearer tokens from one token endpoint, as a TokenSource of http_provider.py."""

    issuer = "the token issuer"  # for messages: "Microsoft Entra ID", ...

    def __init__(
        self,
        provider: str,
        token_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._url = token_url
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=TOKEN_TIMEOUT, trust_env=False)
        self._renewal: asyncio.Task[None] | None = None
        self._failure: GatewayError | None = None
        self._failure_until = 0.0
        self._token = ""
        self._renew_at = 0.0
        self._expires_at = 0.0
        self.fetches = 0

    @abc.abstractmethod
    def form(self) -> Mapping[str, str]:
        """The form posted to the token endpoint for a new token."""

    async def headers(self) -> Mapping[str, str]:
        now = self._clock()
        if self._token and now < self._expires_at:
            if now >= self._renew_at:
                self._start_renewal()  # in the background: this token is still good
            return {"authorization": f"Bearer {self._token}"}
        if self._failure is not None and now < self._failure_until:
            raise self._failure.copy()
        await asyncio.shield(self._start_renewal())
        if not self._token or self._clock() >= self._expires_at:
            assert self._failure is not None
            raise self._failure.copy()
        return {"authorization": f"Bearer {self._token}"}

    def invalidate(self, rejected: Mapping[str, str]) -> None:
        """The upstream refused the token a request carried: fetch a new one next time,
        unless a newer one has come meanwhile."""
        if rejected.get("authorization") == f"Bearer {self._token}":
            self._token = ""

    def _start_renewal(self) -> asyncio.Task[None]:
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.ensure_future(self._renew())
        return self._renewal

    async def _renew(self) -> None:
        try:
            token, lifetime = await self._fetch()
        except GatewayError as error:
            now = self._clock()
            self._failure = error
            self._failure_until = now + FAILURE_MEMORY
            if self._token and now < self._expires_at:
                log.warning(
                    "token renewal failed; the current token is kept",
                    extra={"fields": {"provider": self._provider, "reason": error.reason}},
                )
                self._renew_at = now + min(30.0, self._expires_at - now)
            return
        now = self._clock()
        self._token = token
        self._failure = None
        self._expires_at = now + lifetime
        self._renew_at = now + lifetime - min(RENEW_MARGIN, lifetime / 2)

    async def _fetch(self) -> tuple[str, float]:
        self.fetches += 1
        try:
            form = self.form()
        except (ValueError, TypeError) as exc:  # a key that cannot sign
            raise self._refused(f"the credentials cannot be used ({type(exc).__name__})") from None
        try:
            response = await self._client.post(self._url, data=form)
        except httpx.HTTPError as exc:
            raise self._unavailable(type(exc).__name__) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise self._unavailable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise self._refused("", response.status_code)
        try:
            body: Any = response.json()
            token = str(body["access_token"])
            lifetime = float(body["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise self._unavailable("malformed token response") from None
        if not token or lifetime <= 0:
            raise self._unavailable("malformed token response")
        return token, lifetime

    def _refused(self, detail: str, status: int | None = None) -> GatewayError:
        metadata = {"provider": self._provider}
        if status is not None:
            metadata["upstreamStatus"] = str(status)
        if detail:
            metadata["detail"] = detail
        return GatewayError(
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_AUTH_FAILED",
            f"{self._provider}: {self.issuer} refused the gateway's own credentials; the"
            " caller's credentials are fine",
            metadata=metadata,
            retryable=False,
            failover=True,
        )

    def _unavailable(self, detail: str) -> GatewayError:
        return GatewayError(
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_AUTH_UNAVAILABLE",
            f"{self._provider}: no {self.issuer} token could be had",
            metadata={"provider": self._provider, "detail": detail},
            retryable=True,
            failover=True,
        )

    async def aclose(self) -> None:
        if self._renewal is not None and not self._renewal.done():
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        await self._client.aclose()
