"""Many streams open at once: OPEN_STREAMS (default 5,000) StreamChat calls held open
together through one gateway process, its resident memory meanwhile, and whether every
one of them ran to its end.

The gateway (authentication and the audit log on, as in bench/stack.py) serves a mock
provider whose `token_delay` (OPEN_STREAMS_TOKEN_DELAY, default 1.5 s a token) keeps each
stream open for about twenty seconds; h2load opens all the streams at once, spread over
50 HTTP/2 connections. Counted: h2load's completed and failed calls, the audit records
by status (gRPC errors come with HTTP 200, so the records are the judge), and the peak
number of calls open at the same moment, from the records' start times and latencies.
Memory: idle (started and warmed, before the load), peak under the load (sampled every
0.2 s), and 5 s after the last stream ended.

Part of `make bench` (bench/run.py); alone: `python -m bench.open_streams`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.stack import STREAM_CHAT, Stack, Target, grpc_frame, h2load, rss_mib

STREAMS = int(os.environ.get("OPEN_STREAMS", "5000"))
TOKEN_DELAY = float(os.environ.get("OPEN_STREAMS_TOKEN_DELAY", "1.5"))
CONNECTIONS = 50

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}
logging: {{level: info}}
audit: {{path: "{audit}"}}
auth:
  issuers:
    - {{issuer: bench, audiences: [llm-gateway], algorithms: [HS256], secret_env: BENCH_SECRET}}
providers:
  - {{name: slow, mock: {{token_delay: {delay}s}}}}
models:
  - {{alias: slow, provider: slow}}
"""


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one moment; an interval that
    ends exactly when another starts does not overlap it."""
    events = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort(key=lambda event: (event[0], event[1]))  # ends before starts at a tie
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def record_interval(record: dict[str, object]) -> tuple[float, float] | None:
    """(start, end) in epoch seconds of an audit record (its `time` and `latency_ms`)."""
    started, latency = record.get("time"), record.get("latency_ms")
    if not isinstance(started, str) or not isinstance(latency, (int, float)):
        return None
    start = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    return start, start + latency / 1000


@dataclass
class OpenStreams:
    streams: int
    completed: int  # h2load: streams that ended with HTTP 200
    failed: int  # h2load: refused, reset or cut
    statuses: Counter[str] = field(default_factory=Counter)  # audit records by status
    peak_open: int = 0
    seconds: float = 0.0
    rss_idle: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0


class OpenStreamsStack(Stack):
    """Only the gateway, serving the slow mock provider."""

    def start(self) -> None:
        from tests.support import free_port

        self.gateway_port = free_port()
        config = self.folder / "gateway.yaml"
        config.write_text(
            CONFIG.format(port=self.gateway_port, audit=self.audit, delay=TOKEN_DELAY)
        )
        log = self.folder / "gateway.log"
        gateway = self._spawn(["-m", "service", "--config", str(config)], log)
        self.gateway_pid = gateway.pid
        end = time.monotonic() + 30
        while "listening" not in log.read_text():
            if time.monotonic() > end or gateway.poll() is not None:
                raise RuntimeError(f"the gateway did not start: {log.read_text()}")
            time.sleep(0.05)

    def slow(self) -> Target:
        headers = (
            "content-type: application/grpc",
            "te: trailers",
            f"authorization: Bearer {self.token}",
        )
        return Target(
            f"http://127.0.0.1:{self.gateway_port}{STREAM_CHAT}", grpc_frame("slow"), headers
        )

    def records(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


def _audit_settled(stack: OpenStreamsStack, count: int, timeout: float = 30.0) -> None:
    """Waits (bounded) until `count` records are in the audit log (written in batches)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if stack.audit.exists() and stack.audit.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.2)


def measure(streams: int = STREAMS) -> OpenStreams:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        stack = OpenStreamsStack(Path(folder))
        try:
            stack.start()
            target = stack.slow()
            warm = min(100, streams)
            h2load(target, in_flight=warm, requests=warm)
            _audit_settled(stack, warm)
            before = len(stack.records())
            time.sleep(1)
            idle = rss_mib(stack.gateway_pid)
            peak = idle
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.wait(0.2):
                    peak = max(peak, rss_mib(stack.gateway_pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            try:
                per_connection = -(-streams // CONNECTIONS)
                load = h2load(
                    target,
                    in_flight=CONNECTIONS * per_connection,
                    requests=streams,
                    clients=CONNECTIONS,
                )
            finally:
                stop.set()
                sampler.join()
            seconds = time.monotonic() - started
            _audit_settled(stack, before + streams)
            time.sleep(5)
            after = rss_mib(stack.gateway_pid)
            records = stack.records()[before:]
        finally:
            stack.stop()
    intervals = [i for i in map(record_interval, records) if i is not None]
    return OpenStreams(
        streams=streams,
        completed=load.done - load.failed,
        failed=load.failed + (streams - load.done),
        statuses=Counter(str(record.get("status")) for record in records),
        peak_open=peak_overlap(intervals),
        seconds=seconds,
        rss_idle=idle,
        rss_peak=peak,
        rss_after=after,
    )


def render(result: OpenStreams) -> str:
    statuses = ", ".join(f"{name} {count}" for name, count in result.statuses.most_common())
    return "\n".join(
        [
            f"## {result.streams:,} streams open at once (mock provider, "
            f"{TOKEN_DELAY:g} s a token)",
            "",
            "| streams | completed | refused or cut | audit records by status | "
            "peak open together | took s | RSS idle MiB | peak MiB | after MiB |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {result.streams:,} | {result.completed:,} | {result.failed:,} | {statuses} | "
            f"{result.peak_open:,} | {result.seconds:.0f} | {result.rss_idle:.0f} | "
            f"{result.rss_peak:.0f} | {result.rss_after:.0f} |",
            "",
        ]
    )


def main() -> int:
    result = measure()
    print(render(result))
    return 0 if result.failed == 0 and set(result.statuses) <= {"OK"} else 1


if __name__ == "__main__":
    sys.exit(main())
