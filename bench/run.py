"""Side-by-side benchmark: the same calls straight to a fake upstream and through the
gateway, in one run, on this machine. `make bench` (bounded: count and time).

Processes: the fake upstream, the gateway (`python -m service`, with authentication and
the audit log on, as in production), and this load generator. Both paths are driven by
Python asyncio clients, so their own cost is in both columns; the difference is the
gateway's overhead. When h2load (nghttp2-client) is installed, it also drives unary gRPC
Chat from C, without the Python client's cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import jwt
from llmgateway.v1 import chat_pb2, content_pb2, provider_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-only-secret-0123456789abcdef0123456789"
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
TIME_LIMIT = float(os.environ.get("BENCH_SECONDS", "60"))  # per phase
PROMPT = "Summarise the benefits of typed gRPC contracts for LLM calls in one sentence."

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}
logging: {{level: info}}
audit: {{path: "{audit}"}}
auth:
  issuers:
    - {{issuer: bench, audiences: [llm-gateway], algorithms: [HS256], secret_env: BENCH_SECRET}}
providers:
  - {{name: upstream, api_key_env: BENCH_UPSTREAM_KEY, base_url: "http://127.0.0.1:{upstream}/v1", openai: {{}}}}
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: gpt, provider: upstream, upstream_model: gpt-4o-mini}}
  - {{alias: mock, provider: mock}}
"""


@dataclass
class Result:
    name: str
    latencies: list[float]
    first_chunk: list[float]
    errors: int
    wall: float

    def row(self) -> str:
        lat = sorted(self.latencies)

        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.2f}"

        ttft = sorted(self.first_chunk)
        rate = len(lat) / self.wall if self.wall else 0.0
        return (
            f"| {self.name} | {len(lat)} | {self.errors} | {rate:.0f} | {pct(lat, 0.5)} | "
            f"{pct(lat, 0.9)} | {pct(lat, 0.99)} | {pct(ttft, 0.5)} |"
        )


async def drive(
    name: str,
    call: Callable[[], Awaitable[float | None]],
    concurrency: int = CONCURRENCY,
    requests: int = REQUESTS,
) -> Result:
    """`requests` calls, `concurrency` at a time, stopped at TIME_LIMIT."""
    latencies: list[float] = []
    first: list[float] = []
    errors = 0
    remaining = requests
    deadline = time.perf_counter() + TIME_LIMIT

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                ttft = await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            if ttft is not None:
                first.append(ttft - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, latencies, first, errors, time.perf_counter() - started)


def chat_request(model: str) -> chat_pb2.ChatRequest:
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=PROMPT)])
    return chat_pb2.ChatRequest(model=model, messages=[message])


async def phases(upstream_port: int, gateway_port: int, token: str) -> list[Result]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"authorization": "Bearer sk-bench"}
    metadata = (("authorization", f"Bearer {token}"),)
    results = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream_port}/v1", limits=limits) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel,
    ):
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)

        async def direct_unary() -> None:
            response = await http.post("/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            json.loads(response.content)

        async def direct_stream() -> float | None:
            first = None
            streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with http.stream(
                "POST", "/chat/completions", json=streamed, headers=headers
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and first is None:
                        first = time.perf_counter()
            return first

        async def gateway_unary(model: str = "gpt") -> None:
            await stub.Chat(chat_request(model), metadata=metadata, timeout=30)

        async def gateway_stream() -> float | None:
            first = None
            async for _ in stub.StreamChat(chat_request("gpt"), metadata=metadata, timeout=30):
                if first is None:
                    first = time.perf_counter()
            return first

        async def warm(call: Callable[[], Awaitable[object]]) -> None:
            for _ in range(50):
                await call()

        for call in (direct_unary, gateway_unary, direct_stream, gateway_stream):
            await warm(call)
        serial = max(50, REQUESTS // 5)
        results.append(
            await drive("one at a time: direct, unary", lambda: _none(direct_unary()), 1, serial)
        )
        results.append(
            await drive("one at a time: gateway, Chat", lambda: _none(gateway_unary()), 1, serial)
        )
        results.append(await drive("one at a time: direct, SSE stream", direct_stream, 1, serial))
        results.append(await drive("one at a time: gateway, StreamChat", gateway_stream, 1, serial))
        results.append(await drive("direct HTTP → upstream, unary", lambda: _none(direct_unary())))
        results.append(
            await drive("gRPC → gateway → upstream, Chat", lambda: _none(gateway_unary()))
        )
        results.append(await drive("direct HTTP → upstream, SSE stream", direct_stream))
        results.append(await drive("gRPC → gateway → upstream, StreamChat", gateway_stream))
        results.append(
            await drive(
                "gRPC → gateway, mock provider (no upstream)", lambda: _none(gateway_unary("mock"))
            )
        )
    return results


async def _none(awaitable: Awaitable[object]) -> None:
    await awaitable


def h2load(gateway_port: int, token: str) -> str | None:
    binary = shutil.which("h2load")
    if binary is None:
        return None
    payload = chat_request("gpt").SerializeToString()
    with tempfile.NamedTemporaryFile(delete=False) as data:
        data.write(b"\x00" + struct.pack(">I", len(payload)) + payload)
    try:
        run = subprocess.run(
            [
                binary,
                "-n",
                str(REQUESTS),
                "-c",
                "4",
                "-m",
                str(max(1, CONCURRENCY // 4)),
                "-d",
                data.name,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "-H",
                f"authorization: Bearer {token}",
                f"http://127.0.0.1:{gateway_port}/llmgateway.v1.ProviderService/Chat",
            ],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT + 30,
        )
    finally:
        os.unlink(data.name)
    keep = [
        line
        for line in run.stdout.splitlines()
        if line.startswith(("finished in", "requests:", "time for request:", "status codes:"))
    ]
    return "\n".join(keep)


def wait_for_file(path: Path, seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise RuntimeError(f"{path} was not written")


def main() -> int:
    from tests.support import free_port

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_SECRET": SECRET,
            "BENCH_UPSTREAM_KEY": "sk-bench",
        }
        upstream = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_upstream", str(tmp / "port")], cwd=ROOT, env=env
        )
        gateway = None
        try:
            upstream_port = int(wait_for_file(tmp / "port", 20))
            gateway_port = free_port()
            (tmp / "gateway.yaml").write_text(
                CONFIG.format(port=gateway_port, audit=tmp / "audit.jsonl", upstream=upstream_port)
            )
            log = (tmp / "gateway.log").open("w")
            gateway = subprocess.Popen(
                [sys.executable, "-m", "service", "--config", str(tmp / "gateway.yaml")],
                cwd=ROOT,
                env=env,
                stderr=log,
            )
            end = time.monotonic() + 20
            while "listening" not in (tmp / "gateway.log").read_text():
                if time.monotonic() > end or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.05)
            now = int(time.time())
            token = jwt.encode(
                {
                    "iss": "bench",
                    "aud": "llm-gateway",
                    "sub": "bench",
                    "iat": now,
                    "exp": now + 3600,
                    "scope": "chat",
                },
                SECRET,
                algorithm="HS256",
            )
            results = asyncio.run(phases(upstream_port, gateway_port, token))
            c_client = h2load(gateway_port, token)
            audit_lines = (
                sum(1 for _ in (tmp / "audit.jsonl").open())
                if (tmp / "audit.jsonl").exists()
                else 0
            )
        finally:
            for process in (gateway, upstream):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
    report = render(results, c_client, audit_lines)
    print(report)
    (ROOT / "bench" / "results.md").write_text(report)
    return 0


def render(results: list[Result], c_client: str | None, audit_lines: int) -> str:
    direct, gateway, direct_s, gateway_s = results[:4]
    overhead = statistics.median(gateway.latencies) - statistics.median(direct.latencies)
    ttft_overhead = statistics.median(gateway_s.first_chunk) - statistics.median(
        direct_s.first_chunk
    )
    lines = [
        "# Benchmark: direct to the upstream vs through the gateway",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}; "
        f"{REQUESTS} calls per phase, {CONCURRENCY} in flight, loopback only. The fake upstream, "
        "the gateway (authentication and audit log on) and the load generator share the cores.",
        "",
        "| path | calls | errors | calls/s | p50 ms | p90 ms | p99 ms | first chunk p50 ms |",
        "|---|---|---|---|---|---|---|---|",
        *(r.row() for r in results),
        "",
        f"Gateway overhead at the median, one call at a time: {overhead * 1000:.2f} ms per unary "
        f"call, {ttft_overhead * 1000:.2f} ms to the first streamed chunk. Under load the "
        "phases with many calls in flight compare throughput on the shared cores. "
        f"Audit records written: {audit_lines}.",
    ]
    if c_client:
        lines += [
            "",
            "h2load (C client, unary Chat through the gateway):",
            "",
            "```",
            c_client,
            "```",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
