"""The real command line: start-up, configuration errors, SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import provider_service_pb2_grpc

from tests.support import PYTHON, ROOT, chat_request, gateway_process, subprocess_env

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}
auth: {{disabled: true}}
providers:
  - name: mock
    mock: {{token_delay: 0.05s}}
models:
  - {{alias: mock, provider: mock}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "service", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=subprocess_env() if env is None else env,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_graceful_shutdown_finishes_in_flight_streams(tmp_path: Path, signum: int) -> None:
    with gateway_process(_write(tmp_path, CONFIG.format(port=0)), tmp_path) as gateway:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            service_name = "llmgateway.v1.ProviderService"
            check = await health.Check(
                health_pb2.HealthCheckRequest(service=service_name), timeout=5
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=service_name), timeout=20)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            words = " ".join(f"w{i}" for i in range(20))  # 20 tokens x 50 ms = about 1 s
            stream = stub.StreamChat(chat_request(words), timeout=20)
            first = await stream.read()
            assert first.text_delta == "w0"

            gateway.process.send_signal(signum)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await watch.read() is grpc.aio.EOF, "draining ends every Watch"
            assert await watch.code() == grpc.StatusCode.OK

            rest = []
            while (chunk := await stream.read()) is not grpc.aio.EOF:
                rest.append(chunk)
            assert "".join([first.text_delta, *(c.text_delta for c in rest)]) == words
            assert rest[-1].usage.output_tokens == 20
            assert await stream.code() == grpc.StatusCode.OK

            exit_code = await asyncio.to_thread(gateway.process.wait, 15)
        assert exit_code == 0
        logs = gateway.logs()
        assert '"shutting down"' in logs and '"stopped"' in logs
        assert words not in logs, "prompts are never logged"


def test_check_config_accepts_the_default_config() -> None:
    result = _run(["check-config", "--config", "config/default.yaml"])
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("providers: []\nmodels: []\n", "providers: at least one provider is required"),
        (
            "providers:\n  - name: m\n    mock: {token_delay: fast}\nmodels:\n  - {alias: a, provider: m}\n",
            "providers[0].mock.token_delay: must be a duration",
        ),
        (
            "providers:\n  - name: m\n    mock: {}\n    colour: red\nmodels:\n  - {alias: a, provider: m}\n",
            "providers[0].colour: unknown field",
        ),
        (
            "providers:\n  - name: m\n    mock: {}\nmodels:\n  - {alias: a, provider: other}\n",
            'models[0].provider: no provider is named "other"',
        ),
        (
            "auth: {disabled: true}\n"
            "providers:\n  - {name: m, mock: {}, api_key_env: LLMGW_TEST_UNSET_KEY}\n"
            "models:\n  - {alias: a, provider: m}\n",
            "providers[0].api_key_env: environment variable LLMGW_TEST_UNSET_KEY is not set",
        ),
        ("server: {port: 70000}\nproviders: []\n", "server.port: must be at most 65535"),
        ("server: [1, 2\n", "not valid YAML at line"),
        (
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n",
            "auth: configure at least one issuer, or set disabled: true",
        ),
    ],
)
def test_config_errors_exit_non_zero_before_serving(
    tmp_path: Path, text: str, expected: str
) -> None:
    result = _run(["--config", str(_write(tmp_path, text))])
    assert result.returncode == 2
    assert expected in result.stderr
    assert "listening" not in result.stderr


def test_missing_config_file_and_flag() -> None:
    missing = _run(["--config", "/nonexistent/gateway.yaml"])
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    env = {k: v for k, v in subprocess_env().items() if k != "LLM_GATEWAY_CONFIG"}
    no_flag = _run([], env=env)
    assert no_flag.returncode == 2 and "--config" in no_flag.stderr


async def test_port_in_use_exits_non_zero(tmp_path: Path) -> None:
    with gateway_process(_write(tmp_path, CONFIG.format(port=0)), tmp_path) as first:
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        result = await asyncio.to_thread(
            _run, ["--config", str(_write(second_dir, CONFIG.format(port=first.port)))]
        )
    assert result.returncode == 3
    assert "cannot start" in result.stderr


async def test_metrics_port_in_use_exits_non_zero(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        text = CONFIG.format(port=0) + (f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n")
        result = await asyncio.to_thread(_run, ["--config", str(_write(tmp_path, text))])
    assert result.returncode == 3
    assert "cannot serve metrics" in result.stderr
