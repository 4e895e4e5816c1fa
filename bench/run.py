"""Side-by-side benchmark, in one run on this machine: `make bench`.

Four paths for the same Chat call: straight to a fast fake OpenAI upstream (HTTP/1.1),
a bare grpc.aio + uvloop echo server (the floor for any Python gRPC server), the gateway
with its built-in mock provider, and the gateway through the fake upstream; then the
same two gateway paths on a second gateway run with `server.workers: 2` (its calls over 16
connections, since the kernel spreads connections over the workers). The gateways run
with authentication and the audit log on. h2load (C) drives every unary and
streamed phase, so the load generator's cost is small and the same in every column;
time to the first streamed chunk is taken with minimal asyncio clients, one call at a
time. All processes share the machine's cores. Bounded: each phase runs for a set time
or count. Writes bench/results.md.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop
from llmgateway.v1 import provider_service_pb2_grpc

from bench.stack import (
    ROOT,
    UPSTREAM_KEY,
    Load,
    Stack,
    Target,
    chat_request,
    h2load,
    rss_mib,
    running_stack,
    upstream_body,
)

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))  # per round under load
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))  # interleaved; the median is reported
SERIAL = int(os.environ.get("BENCH_SERIAL", "2000"))  # calls one at a time, per path
IN_FLIGHT = 64
TTFT_CALLS = 200
WORKERS = 2  # a second gateway with server.workers: the rows "gateway, workers: 2"


@dataclass
class Row:
    path: str
    serial: Load | None = None
    loaded: Load | None = None
    errors: int = 0


@dataclass
class StreamRow:
    path: str
    loaded: Load
    chunks_per_stream: int
    errors: int
    first_chunk_ms: float

    @property
    def chunks_per_second(self) -> float:
        return self.loaded.rate * self.chunks_per_stream


class RssSampler:
    """The gateway's peak resident memory while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0

    @contextmanager
    def sampling(self) -> Iterator[None]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                self.peak = max(self.peak, rss_mib(self.pid))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


# --- time to the first chunk, one call at a time, with minimal clients ---------------


async def _first_chunk_direct(port: int) -> float:
    body = upstream_body(stream=True)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {UPSTREAM_KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    try:
        for _ in range(TTFT_CALLS):
            started = time.perf_counter()
            writer.write(head + body)
            await reader.readuntil(b"data: ")
            times.append(time.perf_counter() - started)
            await reader.readuntil(b"0\r\n\r\n")  # the end of the chunked body
    finally:
        writer.close()
    return statistics.median(times) * 1000


async def _first_chunk_grpc(port: int, model: str, token: str) -> tuple[float, int]:
    """(median ms to the first message, messages in one stream)."""
    metadata = (("authorization", f"Bearer {token}"),)
    times = []
    count = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        for index in range(TTFT_CALLS + 20):
            started = time.perf_counter()
            first = 0.0
            count = 0
            async for _ in stub.StreamChat(chat_request(model), metadata=metadata, timeout=30):
                if not count:
                    first = time.perf_counter() - started
                count += 1
            if index >= 20:  # the first calls warm the channel
                times.append(first)
    return statistics.median(times) * 1000, count


# --- phases ---------------------------------------------------------------------------


def _with_errors(stack: Stack, run: Callable[[], Load], gateway: bool) -> tuple[Load, int]:
    stack.audit_failures()
    load = run()
    failed = stack.audit_failures()[1] if gateway else 0
    return load, load.failed + failed


def interleaved(stack: Stack, items: list[tuple[Target, bool]]) -> list[tuple[Load, int]]:
    """Every target at IN_FLIGHT calls at a time, in ROUNDS interleaved rounds, so that a
    burst of other work on the machine hits all paths alike: each target's median round
    and its errors over all rounds."""
    loads: list[list[Load]] = [[] for _ in items]
    errors = [0] * len(items)
    for _ in range(ROUNDS):
        for index, (target, gateway) in enumerate(items):
            load, failed = _with_errors(
                stack, lambda t=target: h2load(t, in_flight=IN_FLIGHT, seconds=SECONDS), gateway
            )
            loads[index].append(load)
            errors[index] += failed
    return [
        (sorted(runs, key=lambda load: load.rate)[len(runs) // 2], failed)
        for runs, failed in zip(loads, errors, strict=True)
    ]


def measure(stack: Stack) -> tuple[list[Row], list[StreamRow], dict[str, float]]:
    rss = {"idle": rss_mib(stack.gateway_pid)}
    sampler = RssSampler(stack.gateway_pid)
    paths: list[tuple[str, Target, bool]] = [
        ("straight to the fake upstream (HTTP/1.1)", stack.direct(), False),
        ("bare grpc.aio + uvloop echo server (the floor)", stack.echo(), False),
        ("gateway, mock provider (no upstream)", stack.gateway("mock"), True),
        ("gateway → fake upstream", stack.gateway("gpt"), True),
    ]
    if stack.workers > 1:
        paths += [
            (
                f"gateway, workers: {stack.workers}, mock provider",
                stack.gateway_workers("mock"),
                True,
            ),
            (
                f"gateway, workers: {stack.workers} → fake upstream",
                stack.gateway_workers("gpt"),
                True,
            ),
        ]
    for _, target, _ in paths:  # warm every path
        h2load(target, in_flight=4, requests=400)
    rows = []
    with sampler.sampling():
        for name, target, gateway in paths:
            row = Row(name)
            row.serial, serial_errors = _with_errors(
                stack,
                lambda t=target: h2load(t, in_flight=1, requests=SERIAL, latencies=True),
                gateway,
            )
            row.errors = serial_errors
            rows.append(row)
        for row, (loaded, errors) in zip(
            rows, interleaved(stack, [(t, g) for _, t, g in paths]), strict=True
        ):
            row.loaded = loaded
            row.errors += errors
        loop_run = uvloop.run
        direct_ttft = loop_run(_first_chunk_direct(stack.upstream_port))
        echo_ttft, echo_chunks = loop_run(_first_chunk_grpc(stack.echo_port, "gpt", stack.token))
        gw_ttft, gw_chunks = loop_run(_first_chunk_grpc(stack.gateway_port, "gpt", stack.token))
        stream_paths = [
            (
                "straight to the fake upstream (SSE events)",
                stack.direct(stream=True),
                23,
                False,
                direct_ttft,
            ),
            (
                "bare grpc.aio + uvloop echo server (the floor)",
                stack.echo(stream=True),
                echo_chunks,
                False,
                echo_ttft,
            ),
            (
                "gateway → fake upstream",
                stack.gateway("gpt", stream=True),
                gw_chunks,
                True,
                gw_ttft,
            ),
        ]
        for _, target, _, _, _ in stream_paths:
            h2load(target, in_flight=4, requests=100)
        measured = interleaved(stack, [(p[1], p[3]) for p in stream_paths])
        streams = [
            StreamRow(name, loaded, per_stream, errors, ttft)
            for (name, _, per_stream, _, ttft), (loaded, errors) in zip(
                stream_paths, measured, strict=True
            )
        ]
    rss["load"] = sampler.peak
    time.sleep(2)
    rss["after"] = rss_mib(stack.gateway_pid)
    return rows, streams, rss


def render(rows: list[Row], streams: list[StreamRow], rss: dict[str, float], audit: int) -> str:
    direct, floor, mock, upstream = rows[:4]
    assert direct.serial and floor.loaded and mock.loaded and upstream.loaded
    assert mock.serial and upstream.serial

    def unary(row: Row) -> str:
        assert row.serial and row.loaded
        share = row.loaded.rate / floor.loaded.rate * 100 if floor.loaded.rate else 0
        return (
            f"| {row.path} | {row.serial.p50:.2f} | {row.serial.pct(0.99):.2f} | "
            f"{row.loaded.rate:,.0f} | {row.errors} | {share:.0f} % |"
        )

    def stream(row: StreamRow) -> str:
        return (
            f"| {row.path} | {row.first_chunk_ms:.2f} | {row.loaded.rate:,.0f} | "
            f"{row.chunks_per_stream} | {row.chunks_per_second:,.0f} | {row.errors} |"
        )

    added_mock = mock.serial.p50 - floor.serial.p50
    added_up = upstream.serial.p50 - direct.serial.p50
    added_up_p99 = upstream.serial.pct(0.99) - direct.serial.pct(0.99)
    added_ttft = streams[2].first_chunk_ms - streams[0].first_chunk_ms
    cpu = "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    lines = [
        "# Benchmark: the gateway's own cost per call, side by side",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.machine()}, {platform.system()} {platform.release()}. Loopback only; the "
        "fake upstream, the echo server, the gateway and h2load share the cores. The gateway "
        "runs with authentication (HS256 bearer) and the audit log on. h2load sends every "
        f"call; {SERIAL} calls one at a time per path, then {IN_FLIGHT} in flight in {ROUNDS} "
        f"interleaved rounds of {SECONDS:g} s (the median round is shown). Errors: failed HTTP "
        "requests plus failed calls in the audit log (calls h2load itself cut at the end of "
        "a timed round, CANCELLED, not counted).",
        "",
        "## Unary Chat",
        "",
        "| path | 1 in flight: p50 ms | p99 ms | 64 in flight: calls/s | errors | share of the floor |",
        "|---|---|---|---|---|---|",
        *(unary(row) for row in rows),
        "",
        f"Added at 1 in flight, p50: {added_up:.2f} ms through the upstream (over the direct "
        f"path; p99 {added_up_p99:+.2f} ms), {added_mock:.2f} ms with the mock provider (over "
        "the echo server).",
        "",
        f"## Streams ({IN_FLIGHT} in flight)",
        "",
        "| path | first chunk p50 ms (1 in flight) | streams/s | chunks per stream | chunks/s | errors |",
        "|---|---|---|---|---|---|",
        *(stream(row) for row in streams),
        "",
        f"Time to the first chunk added by the gateway: {added_ttft:.2f} ms.",
        "",
        "## Gateway memory (RSS)",
        "",
        f"Idle {rss['idle']:.0f} MiB; peak under load {rss['load']:.0f} MiB; "
        f"2 s after the load {rss['after']:.0f} MiB. Audit records written: {audit}.",
    ]
    return "\n".join(lines) + "\n"


def extra_sections() -> str:
    """Measured after the side-by-side run, each with a gateway of its own: many streams
    open at once (bench/open_streams.py); then the latest soak's figures (`make soak`,
    bench/soak.md), when there are any."""
    from bench import open_streams

    sections = "\n" + open_streams.render(open_streams.measure())
    soak = ROOT / "bench" / "soak.md"
    if soak.exists():
        sections += "\n" + soak.read_text()
    return sections


def main() -> int:
    with running_stack(WORKERS) as stack:
        rows, streams, rss = measure(stack)
        audit = sum(1 for _ in stack.audit.open()) if stack.audit.exists() else 0
    report = render(rows, streams, rss, audit) + extra_sections()
    print(report)
    out = os.environ.get("BENCH_OUT", str(ROOT / "bench" / "results.md"))
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        report += "\n" + notes.read_text()
    Path(out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
