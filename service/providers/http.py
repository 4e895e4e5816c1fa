"""The transport half shared by HTTP adapters: one long-lived pooled httpx client per
upstream, with explicit timeouts, a response-size cap and typed transport errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from service.errors import GatewayError
from service.providers.base import Timeouts
from service.providers.upstream_errors import pool_exhausted, transport_failure

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# The router's own timer ends an attempt at its deadline (and reports
# DEADLINE_EXCEEDED or an attempt timeout); httpx's timeouts sit just beyond it, so they
# only ever fire for the configured connect and read gaps.
DEADLINE_SLACK = 0.25


@dataclass(frozen=True)
class HttpRequestSpec:
    """A whole upstream request, built by a pure transform."""

    method: str
    url: str  # relative to the client's base URL, query string included
    json_body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class TransportSettings:
    base_url: str
    headers: Mapping[str, str]
    max_connections: int = 100
    max_keepalive_connections: int = 20
    keepalive_expiry: float = 30.0
    acquire_timeout: float = 1.0  # longest wait for a free connection
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


class UpstreamStream:
    """An open streaming response: status and headers, then the body as it arrives."""

    def __init__(self, response: httpx.Response, client: UpstreamClient, model: str) -> None:
        self._response = response
        self._client = client
        self._model = model
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def read_body(self) -> bytes:
        return await self._client.read_capped(self._response, self._model)

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._client.guard_stream(self._response.aiter_bytes(), self._model):
            yield chunk


class UpstreamClient:
    def __init__(self, provider: str, settings: TransportSettings) -> None:
        self.provider = provider
        self.settings = settings
        # One slot per pooled connection, held from sending until the response is closed:
        # a call never waits inside the HTTP client, where the wait would look like a
        # connect timeout of the upstream.
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers=dict(settings.headers),
            # Every request carries its deployment's own limits (see _timeout).
            timeout=httpx.Timeout(Timeouts().read, connect=Timeouts().connect),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_keepalive_connections,
                keepalive_expiry=settings.keepalive_expiry,
            ),
            follow_redirects=False,
            trust_env=False,
        )

    def _timeout(self, deadline: float, timeouts: Timeouts) -> httpx.Timeout:
        """The deployment's connect and read limits, never longer than the time left
        (plus the slack)."""
        remaining = deadline - asyncio.get_running_loop().time() + DEADLINE_SLACK
        remaining = max(0.001, remaining)
        return httpx.Timeout(
            connect=min(timeouts.connect, remaining),
            read=min(timeouts.read, remaining),
            write=min(timeouts.read, remaining),
            pool=min(timeouts.connect, remaining),
        )

    @asynccontextmanager
    async def _slot(self, deadline: float, model: str) -> AsyncIterator[None]:
        """A free connection slot, waited for no longer than the pool's acquire timeout
        and the attempt's deadline."""
        if self._slots.locked():
            wait = min(self.settings.acquire_timeout, deadline - asyncio.get_running_loop().time())
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    await self._slots.acquire()
            except TimeoutError:
                raise pool_exhausted(self.provider, model, self.settings.acquire_timeout) from None
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    def _error(self, exc: Exception, model: str) -> GatewayError:
        if isinstance(exc, httpx.TimeoutException):
            return transport_failure(self.provider, model, "timeout", type(exc).__name__)
        if isinstance(exc, httpx.ConnectError):
            return transport_failure(self.provider, model, "connect", type(exc).__name__)
        if isinstance(exc, httpx.DecodingError):
            return transport_failure(self.provider, model, "protocol", type(exc).__name__)
        return transport_failure(self.provider, model, "reset", type(exc).__name__)

    def _build(self, spec: HttpRequestSpec, deadline: float, timeouts: Timeouts) -> httpx.Request:
        return self._client.build_request(
            spec.method,
            spec.url,
            json=spec.json_body,
            headers=dict(spec.headers),
            timeout=self._timeout(deadline, timeouts),
        )

    async def read_capped(self, response: httpx.Response, model: str) -> bytes:
        body = bytearray()
        async for chunk in self.guard_stream(response.aiter_bytes(), model):
            body.extend(chunk)
            if len(body) > self.settings.max_response_bytes:
                raise transport_failure(self.provider, model, "too_large")
        return bytes(body)

    async def guard_stream(self, chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except httpx.HTTPError as exc:
            raise self._error(exc, model) from None

    async def request(
        self, spec: HttpRequestSpec, deadline: float, model: str, timeouts: Timeouts
    ) -> HttpResponse:
        """Sends a request and reads the whole (capped) body."""
        async with self._slot(deadline, model):
            try:
                response = await self._client.send(
                    self._build(spec, deadline, timeouts), stream=True
                )
            except httpx.HTTPError as exc:
                raise self._error(exc, model) from None
            try:
                body = await self.read_capped(response, model)
            finally:
                await response.aclose()
        return HttpResponse(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, body
        )

    @asynccontextmanager
    async def stream(
        self, spec: HttpRequestSpec, deadline: float, model: str, timeouts: Timeouts
    ) -> AsyncIterator[UpstreamStream]:
        """Opens a streaming response; leaving the block (or a cancellation) closes it."""
        async with self._slot(deadline, model):
            try:
                response = await self._client.send(
                    self._build(spec, deadline, timeouts), stream=True
                )
            except httpx.HTTPError as exc:
                raise self._error(exc, model) from None
            try:
                yield UpstreamStream(response, self, model)
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
