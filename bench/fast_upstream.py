"""A fast fake OpenAI Chat Completions upstream on raw asyncio (uvloop), for the
benchmark: HTTP/1.1 keep-alive, fixed answers, no per-request work beyond reading the
request. It speaks the wire format of the real API (reference §2): a chat.completion
object, or with `"stream": true` an SSE stream of chat.completion.chunk objects (role,
STREAM_WORDS content chunks, finish, usage) ending in `data: [DONE]`; on `/embeddings`, one embedding of four floats.

`python -m bench.fast_upstream PORT_FILE`: listens on a free loopback port and writes
it to PORT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import uvloop

BENCH_KEY = "sk-bench"
STREAM_WORDS = 20  # content chunks per stream
MODEL = "gpt-4o-mini"


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Typed contracts help."},
                }
            ],
            "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17},
        },
        separators=(",", ":"),
    ).encode()


def _chunk(delta: dict[str, object], finish: str | None = None, usage: bool = False) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 14, "completion_tokens": STREAM_WORDS, "total_tokens": 34}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _stream() -> bytes:
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": f"word{i} "}) for i in range(STREAM_WORDS)]
    events += [_chunk({}, finish="stop"), _chunk({}, usage=True), b"data: [DONE]\n\n"]
    return b"".join(events)


def _response(status: str, content_type: str, body: bytes, chunked: bool) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nx-request-id: req_bench\r\n"
    if chunked:
        return (
            (head + "transfer-encoding: chunked\r\n\r\n").encode()
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


UNARY = _response("200 OK", "application/json", _completion(), chunked=False)
STREAM = _response("200 OK", "text/event-stream", _stream(), chunked=True)
EMBEDDINGS = _response(
    "200 OK",
    "application/json",
    json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.125, -0.5, 0.25, 1.0]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 14, "total_tokens": 14},
        },
        separators=(",", ":"),
    ).encode(),
    chunked=False,
)
UNAUTHORIZED = _response(
    "401 Unauthorized",
    "application/json",
    b'{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}',
    chunked=False,
)


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            if f"bearer {BENCH_KEY}".encode() not in head:
                self.transport.write(UNAUTHORIZED)
            elif head[: head.find(b"\r\n")].find(b"/embeddings") >= 0:
                self.transport.write(EMBEDDINGS)
            elif b'"stream":true' in body.replace(b" ", b""):
                self.transport.write(STREAM)
            else:
                self.transport.write(UNARY)


async def main(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
