"""The transport half shared by HTTP adapters: one long-lived pooled aiohttp session per
upstream, with a bounded wait for a free connection, explicit timeouts, a response-size
cap and typed transport errors. Nothing above this module knows which HTTP client runs.

aiohttp rather than httpx on the call path: measured on this gateway's benchmark, httpx's
connection pool serialises concurrent requests (encode/httpx#3215) and costs several
times more per request (bench/results.md)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import certifi
import orjson
from yarl import URL

from service.errors import GatewayError
from service.providers.base import Timeouts
from service.providers.upstream_errors import pool_exhausted, transport_failure

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# The router's own timer ends an attempt at its deadline (and reports
# DEADLINE_EXCEEDED or an attempt timeout); the client's timeouts sit just beyond it, so
# they only ever fire for the configured connect and read gaps.
DEADLINE_SLACK = 0.25
# Characters left as they are in a request target: the reserved set and escapes made by
# the dialects (each path segment is percent-encoded where it is built).
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_JSON_HEADERS = {"content-type": "application/json"}
_READ_SIZE = 64 * 1024
_URL_CACHE = 1024  # distinct request targets remembered (callers may name models)


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


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Response headers by lower-case name; a repeated header's values joined by ", "."""
    joined: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def _unread(content: aiohttp.StreamReader) -> bytes:
    """Bytes received but not yet read when the connection failed. aiohttp reports the
    failure before them; another HTTP client returns them first and fails on the next
    read, and the caller must see the same either way."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(buffer)[getattr(content, "_buffer_offset", 0) :]
    buffer.clear()
    return bytes(data)


class UpstreamStream:
    """An open streaming response: status and headers, then the body as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse, client: UpstreamClient, model: str):
        self._response = response
        self._client = client
        self._model = model
        self.status = response.status
        self.headers = _lower(response.headers)

    async def read_body(self) -> bytes:
        return await self._client.read_capped(self._response, self._model)

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        client = self._client
        while True:
            try:
                # As the upstream sent it (one HTTP chunk at a time), not all that is
                # buffered: events reach the caller as soon as they arrive.
                chunk, end_of_chunk = await content.readchunk()
            except (aiohttp.ClientError, TimeoutError) as exc:
                rest = _unread(content)
                if rest:  # what arrived before the failure still reaches the caller
                    yield rest
                raise client.error(exc, self._model) from None
            if chunk:
                yield chunk
            elif not end_of_chunk:
                return


class UpstreamClient:
    def __init__(self, provider: str, settings: TransportSettings) -> None:
        self.provider = provider
        self.settings = settings
        self._base = settings.base_url.rstrip("/") + "/"
        self._headers = dict(settings.headers)
        self._urls: dict[str, URL] = {}
        # One slot per pooled connection, held from sending until the response is closed:
        # a call never waits inside the HTTP client, where the wait would look like a
        # connect timeout of the upstream.
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (it belongs to the running event loop)."""
        if self._session is None:
            if self._ssl is None and self._base.startswith("https:"):
                self._ssl = ssl.create_default_context(cafile=certifi.where())
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.settings.keepalive_expiry,
                ssl=self._ssl if self._ssl is not None else True,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
                max_field_size=32 * 1024,
                max_line_size=32 * 1024,
                read_bufsize=_READ_SIZE,
            )
        return self._session

    def _timeout(self, deadline: float, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        """The deployment's connect and read limits, never longer than the time left
        (plus the slack)."""
        remaining = deadline - asyncio.get_running_loop().time() + DEADLINE_SLACK
        remaining = max(0.001, remaining)
        connect = min(timeouts.connect, remaining)
        return aiohttp.ClientTimeout(
            total=None,
            connect=connect,
            sock_connect=connect,
            sock_read=min(timeouts.read, remaining),
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

    def error(self, exc: BaseException, model: str) -> GatewayError:
        """A transport failure as the gateway's typed error; its detail names the kind of
        failure (ConnectTimeout, ReadTimeout, ConnectError, DecodingError, ReadError),
        whichever HTTP client runs."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return transport_failure(self.provider, model, "timeout", "ConnectTimeout")
        if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
            return transport_failure(self.provider, model, "timeout", "ReadTimeout")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return transport_failure(self.provider, model, "connect", "ConnectError")
        if isinstance(exc, aiohttp.ClientPayloadError) and "encoding" in str(exc):
            # A body that does not decode as its content-encoding says.
            return transport_failure(self.provider, model, "protocol", "DecodingError")
        return transport_failure(self.provider, model, "reset", "ReadError")

    def _url(self, spec: HttpRequestSpec) -> URL:
        """The absolute URL, built once per distinct target (a handful per deployment)."""
        url = self._urls.get(spec.url)
        if url is None:
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            url = URL(quote(self._base + spec.url.lstrip("/"), safe=_URL_SAFE), encoded=True)
            self._urls[spec.url] = url
        return url

    async def _send(
        self, spec: HttpRequestSpec, deadline: float, timeouts: Timeouts, model: str
    ) -> aiohttp.ClientResponse:
        session = self._open()
        if spec.json_body is not None:
            data: bytes | None = orjson.dumps(spec.json_body)
            headers = {**_JSON_HEADERS, **spec.headers} if spec.headers else _JSON_HEADERS
        else:
            data = None
            headers = dict(spec.headers)
        try:
            return await session.request(
                spec.method,
                self._url(spec),
                data=data,
                headers=headers,
                timeout=self._timeout(deadline, timeouts),
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.error(exc, model) from None

    async def read_capped(self, response: aiohttp.ClientResponse, model: str) -> bytes:
        limit = self.settings.max_response_bytes
        length = response.content_length
        if length is not None and length > limit:
            raise transport_failure(self.provider, model, "too_large")
        body = bytearray()
        content = response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                body += chunk
                if len(body) > limit:
                    raise transport_failure(self.provider, model, "too_large")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.error(exc, model) from None
        return bytes(body)

    def _trim_idle(self) -> None:
        """Closes the oldest idle connections beyond max_keepalive_connections. aiohttp
        has no such cap of its own, and gives a connection back to its pool as soon as
        the body is read, so the surplus is closed here."""
        connector = self._session.connector if self._session is not None else None
        pools = getattr(connector, "_conns", None)
        if not pools:
            return
        surplus = (
            sum(len(kept) for kept in pools.values()) - self.settings.max_keepalive_connections
        )
        for kept in list(pools.values()):
            while surplus > 0 and kept:
                protocol, _ = kept.popleft()
                protocol.close()
                surplus -= 1

    def _close(self, response: aiohttp.ClientResponse) -> None:
        """Gives a fully read connection back to the pool (within its cap of idle ones);
        closes any other, so that a cancelled call's upstream request ends at once."""
        if response.content.at_eof() and not response.content.exception():
            response.release()
            self._trim_idle()
        else:
            response.close()

    async def request(
        self, spec: HttpRequestSpec, deadline: float, model: str, timeouts: Timeouts
    ) -> HttpResponse:
        """Sends a request and reads the whole (capped) body."""
        async with self._slot(deadline, model):
            response = await self._send(spec, deadline, timeouts, model)
            try:
                body = await self.read_capped(response, model)
            finally:
                self._close(response)
        return HttpResponse(response.status, _lower(response.headers), body)

    @asynccontextmanager
    async def stream(
        self, spec: HttpRequestSpec, deadline: float, model: str, timeouts: Timeouts
    ) -> AsyncIterator[UpstreamStream]:
        """Opens a streaming response; leaving the block (or a cancellation) closes it."""
        async with self._slot(deadline, model):
            response = await self._send(spec, deadline, timeouts, model)
            try:
                yield UpstreamStream(response, self, model)
            finally:
                self._close(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
