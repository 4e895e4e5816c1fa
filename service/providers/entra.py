"""Microsoft Entra ID access tokens for Azure OpenAI, by the OAuth 2.0 client
credentials flow: fetched when first needed, renewed before they expire (when half
their lifetime, at most five minutes, is left), one fetch at a time however many calls
wait for it. A renewal that fails while the current token is still valid keeps that
token; a token the upstream rejects is dropped, so the next attempt fetches a new one.
The client secret and the tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import httpx

from service.errors import GatewayError

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
RENEW_MARGIN = 300.0  # seconds before expiry, at most
TOKEN_TIMEOUT = 10.0


class EntraTokenSource:
    def __init__(
        self,
        provider: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = DEFAULT_SCOPE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scope,
        }
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=TOKEN_TIMEOUT, trust_env=False)
        self._lock = asyncio.Lock()
        self._token = ""
        self._renew_at = 0.0
        self._expires_at = 0.0
        self.fetches = 0

    async def headers(self) -> Mapping[str, str]:
        if not self._token or self._clock() >= self._renew_at:
            async with self._lock:  # later callers find the token the first one fetched
                if not self._token or self._clock() >= self._renew_at:
                    await self._renew()
        return {"authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """The upstream refused the token: fetch a new one next time."""
        self._token = ""

    async def _renew(self) -> None:
        try:
            token, lifetime = await self._fetch()
        except GatewayError:
            if self._token and self._clock() < self._expires_at:
                log.warning(
                    "entra token renewal failed; the current token is kept",
                    extra={"fields": {"provider": self._provider}},
                )
                self._renew_at = self._clock() + min(30.0, self._expires_at - self._clock())
                return
            raise
        now = self._clock()
        self._token = token
        self._expires_at = now + lifetime
        self._renew_at = now + lifetime - min(RENEW_MARGIN, lifetime / 2)

    async def _fetch(self) -> tuple[str, float]:
        self.fetches += 1
        try:
            response = await self._client.post(self._url, data=self._form)
        except httpx.HTTPError as exc:
            raise self._unavailable(type(exc).__name__) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise self._unavailable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise GatewayError(
                grpc.StatusCode.INTERNAL,
                "UPSTREAM_AUTH_FAILED",
                f"{self._provider}: Microsoft Entra ID refused the gateway's client "
                "credentials; the caller's credentials are fine",
                metadata={"provider": self._provider, "upstreamStatus": str(response.status_code)},
                retryable=False,
                failover=True,
            )
        try:
            body: Any = response.json()
            token = str(body["access_token"])
            lifetime = float(body["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise self._unavailable("malformed token response") from None
        if not token or lifetime <= 0:
            raise self._unavailable("malformed token response")
        return token, lifetime

    def _unavailable(self, detail: str) -> GatewayError:
        return GatewayError(
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_AUTH_UNAVAILABLE",
            f"{self._provider}: no Microsoft Entra ID token could be had",
            metadata={"provider": self._provider, "detail": detail},
            retryable=True,
            failover=True,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
