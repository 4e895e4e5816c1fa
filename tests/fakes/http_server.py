"""A real HTTP/1.1 server on loopback for fake upstreams, with control over every byte.

Responses are scripts: status and headers, then body writes with delays between them,
optionally chunked, optionally ending in a connection reset. Every request is recorded,
and connections are counted, so tests can assert attempts, wire bodies, and that the
gateway closed an upstream request when its caller went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackServer

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


@dataclass
class FakeRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Write:
    data: bytes
    delay: float = 0.0  # seconds to wait before this write


@dataclass
class FakeResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    header_delay: float = 0.0  # wait before sending the status line
    reset_after: int | None = None  # abort the TCP connection after this many writes
    close: bool = False  # Connection: close after the response
    hang: bool = False  # accept the request and never answer

    @classmethod
    def json(
        cls, body: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> FakeResponse:
        data = json.dumps(body).encode()
        return cls(status, {"content-type": "application/json", **(headers or {})}, [Write(data)])

    @classmethod
    def raw(
        cls, data: bytes, status: int = 200, content_type: str = "text/plain", **kwargs: Any
    ) -> FakeResponse:
        return cls(status, {"content-type": content_type}, [Write(data)], **kwargs)

    @classmethod
    def stream(
        cls,
        pieces: list[bytes],
        content_type: str = "text/event-stream",
        delay: float = 0.0,
        **kwargs: Any,
    ) -> FakeResponse:
        writes = [Write(piece, delay if i else 0.0) for i, piece in enumerate(pieces)]
        return cls(200, {"content-type": content_type}, writes, chunked=True, **kwargs)


Handler = Callable[[FakeRequest], "FakeResponse | Awaitable[FakeResponse]"]


class FakeHttpServer(LoopbackServer):
    """`async with FakeHttpServer(handler) as fake:` then `fake.url`."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[FakeRequest] = []
        self.scripted: deque[FakeResponse] = deque()
        self.client_disconnects = 0  # the client went away before a response was complete

    def script(self, *responses: FakeResponse) -> None:
        """The next requests get these responses, in order, before the default handler."""
        self.scripted.extend(responses)

    async def wait_for(self, condition: Callable[[], bool], seconds: float = 5.0) -> bool:
        """Polls a condition about the server's counters, bounded in time."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            if condition():
                return True
            await asyncio.sleep(0.01)
        return condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await self._read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            if self.scripted:
                response = self.scripted.popleft()
            else:
                produced = self.handler(request)
                response = await produced if asyncio.iscoroutine(produced) else produced  # type: ignore[assignment]
            if not await self._respond(writer, reader, response):
                return

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> FakeRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        return FakeRequest(method, target, headers, body)

    async def _respond(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, response: FakeResponse
    ) -> bool:
        if response.hang:
            await reader.read()  # until the client closes
            self.client_disconnects += 1
            return False
        if response.header_delay and await self._client_left(reader, response.header_delay):
            self.client_disconnects += 1
            return False
        headers = dict(response.headers)
        if response.chunked:
            headers["transfer-encoding"] = "chunked"
        else:
            headers["content-length"] = str(sum(len(w.data) for w in response.writes))
        if response.close:
            headers["connection"] = "close"
        head = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1"))
        await writer.drain()
        for index, write in enumerate(response.writes):
            if response.reset_after is not None and index >= response.reset_after:
                writer.transport.abort()
                return False
            if write.delay and await self._client_left(reader, write.delay):
                self.client_disconnects += 1
                return False
            if response.chunked:
                if write.data:
                    writer.write(f"{len(write.data):x}\r\n".encode() + write.data + b"\r\n")
            else:
                writer.write(write.data)
            try:
                await writer.drain()
            except ConnectionError:
                self.client_disconnects += 1
                return False
        if response.reset_after is not None and response.reset_after >= len(response.writes):
            writer.transport.abort()
            return False
        if response.chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return not response.close

    @staticmethod
    async def _client_left(reader: asyncio.StreamReader, delay: float) -> bool:
        """Waits `delay` seconds; True when the client closed the connection meanwhile."""
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=delay)
        except TimeoutError:
            return False
        return data == b""


@contextlib.asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[FakeHttpServer]:
    async with FakeHttpServer(handler) as server:
        yield server


def sse(
    events: list[tuple[str | None, str]],
    line_ending: str = "\n",
    space: bool = True,
) -> bytes:
    """Encodes (event name or None, data) pairs as an SSE body."""
    out = []
    for name, data in events:
        lines = []
        if name is not None:
            lines.append(f"event:{' ' if space else ''}{name}")
        lines.extend(f"data:{' ' if space else ''}{line}" for line in data.split("\n"))
        out.append(line_ending.join(lines) + line_ending + line_ending)
    return "".join(out).encode()


def split_bytes(data: bytes, size: int) -> list[bytes]:
    """Cuts a body into pieces of `size` bytes (inside lines, escapes, UTF-8 sequences)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class FakeUpstream:
    """A fake provider that owns a FakeHttpServer (set `self.server` in __init__)."""

    server: FakeHttpServer

    async def __aenter__(self) -> Self:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[FakeRequest]:
        return self.server.requests

    def script(self, *responses: FakeResponse) -> None:
        self.server.script(*responses)
