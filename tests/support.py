"""Helpers shared by the tests: a running gateway and error-detail decoding."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2
from llmgateway.v1 import (
    chat_pb2,
    content_pb2,
    provider_service_pb2_grpc,
)

from service.config import parse_config
from service.server import GatewayServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEV_SECRET = "test-only-dev-secret-0123456789abcdef0123456789"


def subprocess_env() -> dict[str, str]:
    """The environment of gateway subprocesses: the default config's development secret,
    and none of the developer's own provider keys, so the default config serves exactly
    the mock provider."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLM_GATEWAY_DEV_SECRET"] = DEV_SECRET
    return env


# Retries and breakers off: these tests look at one attempt at a time. The resilience
# tests configure them.
BASE_CONFIG = """
server:
  host: 127.0.0.1
  port: 0
  shutdown_grace: 2s
routing:
  retry: {max_attempts: 1}
  breaker: {disabled: true}
auth: {disabled: true}
providers:
  - name: mock
    mock:
      faults_from_metadata: true
  - name: scripted
    mock:
      script: ["First scripted reply.", "Second scripted reply."]
      embedding_dimensions: 8
models:
  - alias: mock
    provider: mock
    upstream_model: mock-echo-1
    context_window: 32768
  - alias: mock-embed
    provider: mock
    upstream_model: mock-embed-1
    capabilities: {embeddings: true}
  - alias: scripted
    provider: scripted
  - alias: scripted-embed
    provider: scripted
    capabilities: {embeddings: true}
  - alias: plain
    provider: mock
    upstream_model: plain-1
    capabilities: {streaming: false, tools: false, vision: false, json_output: false}
"""


ONE_ATTEMPT = "routing: {retry: {max_attempts: 1}, breaker: {disabled: true}}\n"


@dataclass
class Gateway:
    server: GatewayServer
    channel: grpc.aio.Channel
    stub: provider_service_pb2_grpc.ProviderServiceStub
    port: int


@contextlib.asynccontextmanager
async def running_gateway(
    config_text: str = BASE_CONFIG, environ: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    """The real server on an ephemeral loopback port, and a real channel to it.

    `environ` stands in for the process environment (API keys of fake upstreams)."""
    env = {**os.environ, **(environ or {})}
    if not re.search(r"^auth:", config_text, flags=re.M):
        # Tests that are not about authentication say so once, here.
        config_text += "\nauth: {disabled: true}\n"
    loaded = parse_config(config_text, env)
    server = GatewayServer(loaded.config, environ=env, as_written=loaded.as_written)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Gateway(server, channel, provider_service_pb2_grpc.ProviderServiceStub(channel), port)
    finally:
        await channel.close()
        await server.stop(0)


def user(text: str) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])


def chat_request(
    text: str = "Hello there", model: str = "mock", **kwargs: object
) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(model=model, messages=[user(text)], **kwargs)  # type: ignore[arg-type]


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo
    retry_info: error_details_pb2.RetryInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    error_info_count: int = 0
    other: list[str] = field(default_factory=list)

    @property
    def violations(self) -> dict[str, str]:
        assert self.bad_request is not None, "no BadRequest detail"
        return {v.field: v.description for v in self.bad_request.field_violations}


def details_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> Details:
    """Decodes grpc-status-details-bin and checks it agrees with the call's status."""
    trailers = error.trailing_metadata() or ()  # type: ignore[union-attr]
    raw = [v for k, v in trailers if k == "grpc-status-details-bin"]
    assert len(raw) == 1, f"expected one status detail trailer, got {len(raw)}"
    status = status_pb2.Status.FromString(raw[0])
    code = error.code()  # type: ignore[union-attr]
    assert status.code == code.value[0], "Status.code differs from the call's code"
    assert status.message == error.details(), "Status.message differs from the call's"  # type: ignore[union-attr]
    found = Details(code=code, message=status.message, error_info=error_details_pb2.ErrorInfo())
    for detail in status.details:
        for cls, attr in (
            (error_details_pb2.ErrorInfo, "error_info"),
            (error_details_pb2.RetryInfo, "retry_info"),
            (error_details_pb2.BadRequest, "bad_request"),
            (error_details_pb2.QuotaFailure, "quota_failure"),
        ):
            if detail.Is(cls.DESCRIPTOR):
                value = cls()
                detail.Unpack(value)
                setattr(found, attr, value)
                if cls is error_details_pb2.ErrorInfo:
                    found.error_info_count += 1
                break
        else:
            found.other.append(detail.type_url)
    assert found.error_info_count == 1, "every error carries exactly one ErrorInfo"
    assert found.error_info.domain == "llm-gateway.local"
    return found


def free_port() -> int:
    """A loopback port free a moment ago. Another process may take it before it is used:
    only for what cannot bind port 0 itself (a gateway process is started with port 0
    and `gateway_process` reads the port it got; see also `refusing_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound and never
    listening, so that no other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _listening_port(logs: str) -> int | None:
    """The port in the gateway's "listening" log line, once it is there."""
    for line in logs.splitlines():
        if '"listening"' in line:
            with contextlib.suppress(ValueError):
                return int(json.loads(line)["port"])
    return None


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    port: int
    log_path: Path
    config_path: Path

    def logs(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def gateway_process(
    config_path: Path, tmp: Path, port: int = 0, extra_env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """`python -m service --config FILE` as a real process; waits until it listens.

    A config with `port: 0` (and port=0 here) lets the process bind a port of its own
    choosing, which `GatewayProcess.port` then holds: no other process can take it
    between choosing and binding, as it could a port chosen in advance."""
    log_path = tmp / "gateway.log"
    env = {**subprocess_env(), **(extra_env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "service", "--config", str(config_path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    running = GatewayProcess(process, port, log_path, config_path)
    try:
        deadline = time.monotonic() + 60  # a bound for loaded machines, not a wait
        while (listening := _listening_port(running.logs())) is None:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{running.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{running.logs()}")
            time.sleep(0.05)
        assert port in (0, listening), f"asked for port {port}, listening on {listening}"
        running.port = listening
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
