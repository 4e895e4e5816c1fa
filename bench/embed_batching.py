"""Embed batching, measured: `python -m bench.embed_batching` (run by `make bench`).

One process: a fake OpenAI embeddings upstream on raw asyncio (each request answered
after UPSTREAM_DELAY, as a remote API would be), and two gateways in front of it — the
same alias without and with `batch` — each driven by CALLERS concurrent Embed callers
(one input per call) for SECONDS per round, ROUNDS rounds interleaved. Reports calls/s
and upstream requests per call for each, and writes bench/embed_batching.md.
Self-contained: it shares nothing with the other benchmark's stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import grpc
import uvloop
from llmgateway.v1 import embed_pb2, provider_service_pb2_grpc

from service.config import parse_config
from service.server import GatewayServer

ROOT = Path(__file__).resolve().parent.parent
CALLERS = int(os.environ.get("BENCH_EMBED_CALLERS", "64"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
UPSTREAM_DELAY = float(os.environ.get("BENCH_EMBED_UPSTREAM_DELAY", "0.02"))
WINDOW = "0.005s"
DIMENSIONS = 8

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
auth: {{disabled: true}}
providers:
  - {{name: up, base_url: "http://127.0.0.1:{port}/v1", openai_compatible: {{}}}}
models:
  - alias: embed
    provider: up
    upstream_model: e-1
    capabilities: {{embeddings: true}}
{batch}
"""


class EmbeddingsUpstream(asyncio.Protocol):
    """POST /v1/embeddings: one vector per input, after UPSTREAM_DELAY; counts requests."""

    requests = 0

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else len(head)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = json.loads(self.buffer[end + 4 : end + 4 + length])
            self.buffer = self.buffer[end + 4 + length :]
            EmbeddingsUpstream.requests += 1
            asyncio.get_running_loop().call_later(UPSTREAM_DELAY, self._answer, body)

    def _answer(self, body: dict[str, object]) -> None:
        inputs = body["input"]
        assert isinstance(inputs, list)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t) % 7)] * DIMENSIONS}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(len(str(t).split()) for t in inputs)
        payload = json.dumps(
            {
                "object": "list",
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        ).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head.encode() + payload)


async def drive(port: int) -> tuple[int, int]:
    """CALLERS callers, each calling Embed in a loop for SECONDS: (calls, failures)."""
    calls = failures = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        end = time.perf_counter() + SECONDS

        async def caller(n: int) -> None:
            nonlocal calls, failures
            i = 0
            while time.perf_counter() < end:
                i += 1
                request = embed_pb2.EmbedRequest(model="embed", inputs=[f"caller {n} text {i}"])
                try:
                    await stub.Embed(request, timeout=30)
                    calls += 1
                except grpc.aio.AioRpcError:
                    failures += 1

        await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    return calls, failures


async def measure() -> dict[str, list[tuple[float, float, int]]]:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(EmbeddingsUpstream, "127.0.0.1", 0, backlog=1024)
    port = upstream.sockets[0].getsockname()[1]
    results: dict[str, list[tuple[float, float, int]]] = {"without batching": [], "batching": []}
    gateways = {}
    for name, batch in (
        ("without batching", ""),
        ("batching", f"    batch: {{window: {WINDOW}, max_inputs: 2048}}"),
    ):
        loaded = parse_config(CONFIG.format(port=port, batch=batch), os.environ)
        server = GatewayServer(loaded.config)
        gateways[name] = (server, await server.start())
    try:
        for _, gw_port in gateways.values():  # warm up
            await drive_briefly(gw_port)
        for _ in range(ROUNDS):
            for name, (_, gw_port) in gateways.items():
                before = EmbeddingsUpstream.requests
                started = time.perf_counter()
                calls, failures = await drive(gw_port)
                elapsed = time.perf_counter() - started
                sent = EmbeddingsUpstream.requests - before
                results[name].append((calls / elapsed, sent / max(calls, 1), failures))
    finally:
        for server, _ in gateways.values():
            await server.stop(0)
        upstream.close()
    return results


async def drive_briefly(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        await asyncio.gather(
            *(
                stub.Embed(embed_pb2.EmbedRequest(model="embed", inputs=["warm"]), timeout=30)
                for _ in range(CALLERS)
            )
        )


def render(results: dict[str, list[tuple[float, float, int]]]) -> str:
    lines = [
        "# Benchmark: Embed batching",
        "",
        f"{CALLERS} concurrent Embed callers, one input per call, against a fake OpenAI "
        f"embeddings upstream that answers each request after {UPSTREAM_DELAY * 1000:g} ms; "
        f"the gateway with and without `batch: {{window: {WINDOW}}}`, in one process with "
        f"its callers and the upstream (they share the cores). {ROUNDS} interleaved rounds "
        f"of {SECONDS:g} s; the median round by calls/s is shown.",
        "",
        "| gateway | calls/s | upstream requests per call | failed calls |",
        "|---|---|---|---|",
    ]
    for name, rounds in results.items():
        rate, per_call, _ = sorted(rounds)[len(rounds) // 2]
        failures = sum(r[2] for r in rounds)
        lines.append(f"| {name} | {rate:,.0f} | {per_call:.3f} | {failures} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    results = uvloop.run(measure())
    report = render(results)
    print(report)
    out = os.environ.get("BENCH_EMBED_OUT", str(ROOT / "bench" / "embed_batching.md"))
    Path(out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
