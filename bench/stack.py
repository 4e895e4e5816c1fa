"""The processes a benchmark run measures side by side, and the C load generator that
drives them: a fast fake OpenAI upstream, the bare grpc.aio echo server (the floor) and
the gateway (`python -m service`, authentication and the audit log on, as in
production), each a process of its own; h2load (Debian's nghttp2-client) sends the
calls, gRPC as HTTP/2 POSTs of a prebuilt length-prefixed body."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from llmgateway.v1 import chat_pb2, content_pb2

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-only-secret-0123456789abcdef0123456789"
UPSTREAM_KEY = "sk-bench"
PROMPT = "Summarise the benefits of typed gRPC contracts for LLM calls in one sentence."
CHAT = "/llmgateway.v1.ProviderService/Chat"
STREAM_CHAT = "/llmgateway.v1.ProviderService/StreamChat"

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


def chat_request(model: str) -> chat_pb2.ChatRequest:
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=PROMPT)])
    return chat_pb2.ChatRequest(model=model, messages=[message])


def grpc_frame(model: str) -> bytes:
    """One gRPC message as sent on the wire: flag, length, the serialized request."""
    payload = chat_request(model).SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def upstream_body(stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def token() -> str:
    now = int(time.time())
    claims = {
        "iss": "bench",
        "aud": "llm-gateway",
        "sub": "bench",
        "iat": now,
        "exp": now + 3600,
        "scope": "chat",
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Load:
    """One h2load run: completed calls, failures, rate and per-call latencies."""

    done: int
    failed: int
    seconds: float
    rate: float  # calls/s
    latencies_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        values = sorted(self.latencies_ms)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


@dataclass
class Target:
    """Where h2load sends its calls, and what it sends."""

    url: str
    body: bytes
    headers: tuple[str, ...]
    h1: bool = False
    connections: int = 0  # 0: up to 4; more spread the calls over a gateway's workers


class Stack:
    """The fake upstream, the echo server and the gateway, running."""

    def __init__(self, folder: Path, workers: int = 1) -> None:
        self.folder = folder
        self.workers = workers  # >1: a second gateway, with server.workers set
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
            "BENCH_SECRET": SECRET,
            "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        }
        self.upstream_port = 0
        self.echo_port = 0
        self.gateway_port = 0
        self.gateway_pid = 0
        self.workers_port = 0
        self.audit = folder / "audit.jsonl"
        self._audit_offsets: dict[Path, int] = {}
        self.token = token()

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=self.env, stdout=out, stderr=out
            )
        self.processes.append(process)
        return process

    def _port(self, module: str, name: str) -> int:
        port_file = self.folder / f"{name}.port"
        process = self._spawn(["-m", module, str(port_file)], self.folder / f"{name}.log")
        end = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > end or process.poll() is not None:
                raise RuntimeError(
                    f"{name} did not start: {(self.folder / f'{name}.log').read_text()}"
                )
            time.sleep(0.05)
        return int(port_file.read_text())

    def start(self) -> None:
        from tests.support import free_port

        self.upstream_port = self._port("bench.fast_upstream", "upstream")
        self.echo_port = self._port("bench.echo_server", "echo")
        self.gateway_port = free_port()
        self.gateway_pid = self._gateway("gateway", self.gateway_port, self.audit, 1)
        if self.workers > 1:
            self.workers_port = free_port()
            audit = self.folder / "audit-workers.jsonl"  # one file per worker
            self._gateway("gateway-workers", self.workers_port, audit, self.workers)

    def _gateway(self, name: str, port: int, audit: Path, workers: int) -> int:
        config = self.folder / f"{name}.yaml"
        text = CONFIG.format(port=port, audit=audit, upstream=self.upstream_port)
        config.write_text(
            text.replace("shutdown_grace: 5s}", f"shutdown_grace: 5s, workers: {workers}}}")
        )
        log = self.folder / f"{name}.log"
        gateway = self._spawn(["-m", "service", "--config", str(config)], log)
        end = time.monotonic() + 30
        while '"listening"' not in log.read_text():
            if time.monotonic() > end or gateway.poll() is not None:
                raise RuntimeError(f"the gateway did not start: {log.read_text()}")
            time.sleep(0.05)
        return gateway.pid

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()

    # --- targets ---------------------------------------------------------------------

    def _grpc(self, port: int, method: str, model: str, auth: bool) -> Target:
        headers = ("content-type: application/grpc", "te: trailers")
        if auth:
            headers += (f"authorization: Bearer {self.token}",)
        return Target(f"http://127.0.0.1:{port}{method}", grpc_frame(model), headers)

    def direct(self, stream: bool = False) -> Target:
        return Target(
            f"http://127.0.0.1:{self.upstream_port}/v1/chat/completions",
            upstream_body(stream),
            ("content-type: application/json", f"authorization: Bearer {UPSTREAM_KEY}"),
            h1=True,
        )

    def echo(self, stream: bool = False) -> Target:
        return self._grpc(self.echo_port, STREAM_CHAT if stream else CHAT, "gpt", auth=True)

    def gateway(self, model: str, stream: bool = False) -> Target:
        return self._grpc(self.gateway_port, STREAM_CHAT if stream else CHAT, model, auth=True)

    def gateway_workers(self, model: str) -> Target:
        """Over 16 connections: the kernel spreads connections, not calls, over workers."""
        target = self._grpc(self.workers_port, CHAT, model, auth=True)
        return dataclasses.replace(target, connections=16)

    # --- the audit log: gRPC errors come with HTTP 200, so the records count them ------

    def audit_failures(self) -> tuple[int, int]:
        """(records, failed records) written since the last look, by every gateway."""
        lines = []
        for path in sorted(self.folder.glob("audit*.jsonl")):
            with path.open("rb") as log:
                log.seek(self._audit_offsets.get(path, 0))
                data = log.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._audit_offsets[path] = self._audit_offsets.get(path, 0) + len(complete)
            lines += [line for line in complete.splitlines() if line.strip()]
        # CANCELLED: calls h2load itself cut when a timed run ends.
        failed = sum(
            1 for line in lines if json.loads(line).get("status") not in ("OK", "CANCELLED")
        )
        return len(lines), failed


def h2load(
    target: Target,
    *,
    in_flight: int,
    requests: int = 0,
    seconds: float = 0.0,
    warm_up: float = 0.5,
    latencies: bool = False,
    clients: int = 0,
) -> Load:
    """Runs h2load against `target` with `in_flight` calls at a time: `requests` calls,
    or for `seconds` after a warm-up; over `clients` connections (default: up to 4)."""
    binary = shutil.which("h2load")
    if binary is None:
        raise RuntimeError("h2load is missing: apt-get install nghttp2-client (make bench does)")
    if target.h1:
        clients, streams = in_flight, 1
    else:
        clients = clients or min(target.connections or 4, in_flight)
        streams = max(1, in_flight // clients)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "body"
        data.write_bytes(target.body)
        log = Path(folder) / "log.tsv"
        args = [binary, "-c", str(clients), "-m", str(streams), "-d", str(data)]
        for header in target.headers:
            args += ["-H", header]
        if target.h1:
            args.append("--h1")
        if seconds:
            args += ["-D", f"{round(seconds)}s", "--warm-up-time", f"{round(warm_up * 1000)}ms"]
        else:
            args += ["-n", str(requests)]
        if latencies:
            args += ["--log-file", str(log)]
        run = subprocess.run(
            [*args, target.url], capture_output=True, text=True, timeout=seconds + requests + 60
        )
        values = []
        if latencies and log.exists():
            for line in log.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    values.append(int(parts[2]) / 1000)
    finished = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", run.stdout)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", run.stdout)
    if finished is None or counts is None:
        raise RuntimeError(f"h2load failed: {run.stdout}\n{run.stderr}")
    done, succeeded = int(counts.group(1)), int(counts.group(2))
    # The first calls of a counted run open connections; drop them from the latencies.
    values = values[len(values) // 10 :] if not seconds else values
    scale = 0.001 if finished.group(2) == "ms" else 1.0
    # h2load's own rate: over the measured time only (after the warm-up of a timed run).
    rate = float(finished.group(3))
    return Load(done, done - succeeded, float(finished.group(1)) * scale, rate, values)


@contextmanager
def running_stack(workers: int = 1) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(Path(folder), workers)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
