"""The Go client (clients/go): its example, built offline against Debian's grpc-go,
authenticates, calls Chat, streams StreamChat and decodes the google.rpc details of an
error, against the running gateway."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakes.keys import HS_SECRET, claims, sign
from tests.support import ROOT, running_gateway

CONFIG = """
server: {host: 127.0.0.1, port: 0}
routing: {retry: {max_attempts: 1}, breaker: {disabled: true}}
auth:
  issuers:
    - {issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}
limits:
  subjects:
    go-limited: {requests_per_minute: 1}
providers:
  - {name: mock, mock: {}}
models:
  - {alias: mock, provider: mock, upstream_model: mock-echo-1}
"""


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("go"), "Debian's golang-go is part of the toolchain (make go-deps)"
    binary = tmp_path_factory.mktemp("go") / "gateway-example"
    subprocess.run(
        [str(ROOT / "scripts" / "build_go_client.sh"), str(binary)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


async def run_example(binary: Path, port: int, subject: str, *args: str) -> tuple[int, str, str]:
    token = sign(claims("dev", sub=subject), HS_SECRET, "HS256")
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "-target",
        f"127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"LLM_GATEWAY_TOKEN": token, "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# The first build of grpc-go from Debian's sources takes a minute or more on a busy machine.
@pytest.mark.timeout(900)
async def test_go_example_calls_chat_and_streams_with_a_token(go_example: Path) -> None:
    async with running_gateway(CONFIG, environ={"GW_SECRET": HS_SECRET}) as gateway:
        code, out, err = await run_example(
            go_example, gateway.port, "go-service", "-model", "mock", "Hello from a Go service"
        )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "chat: Hello from a Go service"
    assert lines[1].startswith("chat route: provider=mock attempts=1 ")
    assert lines[1].endswith("finish=FINISH_REASON_STOP")
    assert lines[2] == "stream: Hello from a Go service"
    chunks = int(lines[3].split("chunks=")[1].split()[0])
    assert chunks >= 2, "the reply arrived as a stream of chunks"
    assert lines[3].endswith("finish=FINISH_REASON_STOP")


@pytest.mark.timeout(900)
async def test_go_example_decodes_error_info_and_retry_info(go_example: Path) -> None:
    async with running_gateway(CONFIG, environ={"GW_SECRET": HS_SECRET}) as gateway:
        unknown = await run_example(go_example, gateway.port, "go-service", "-model", "nope", "Hi")
        first = await run_example(
            go_example, gateway.port, "go-limited", "-mode", "chat", "-model", "mock", "Hi"
        )
        limited = await run_example(
            go_example, gateway.port, "go-limited", "-mode", "chat", "-model", "mock", "Hi"
        )
        anonymous = await asyncio.create_subprocess_exec(
            str(go_example),
            "-target",
            f"127.0.0.1:{gateway.port}",
            "Hi",
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
        _, anonymous_err = await asyncio.wait_for(anonymous.communicate(), timeout=60)
    code, _, err = unknown
    assert code == 1
    assert err.splitlines()[0].startswith('error: NotFound: model "nope" is not configured')
    assert "reason: MODEL_NOT_FOUND (domain llm-gateway.local)" in err.splitlines()
    assert first[0] == 0, first[2]
    code, _, err = limited
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: ResourceExhausted: ")
    assert "reason: CALLER_RATE_LIMITED (domain llm-gateway.local)" in lines, err
    retry = next(line for line in lines if line.startswith("retry after: "))
    assert retry != "retry after: 0s", "RetryInfo carries the time until the next call fits"
    assert any(line.startswith("quota ") for line in lines), "QuotaFailure names the limit"
    assert anonymous.returncode == 1
    assert b"reason: INVALID_CREDENTIALS" in anonymous_err
