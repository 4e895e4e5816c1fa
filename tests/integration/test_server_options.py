"""Server options from the configuration reach the gRPC server."""

from __future__ import annotations

import subprocess

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.config import parse_config
from service.server import server_options
from tests.support import (
    BASE_CONFIG,
    PYTHON,
    ROOT,
    chat_request,
    running_gateway,
    subprocess_env,
)


async def test_max_receive_message_bytes_is_enforced() -> None:
    config = BASE_CONFIG.replace(
        "  shutdown_grace: 2s", "  shutdown_grace: 2s\n  max_receive_message_bytes: 4096"
    )
    async with running_gateway(config) as gateway:
        ok = await gateway.stub.Chat(chat_request("small"), timeout=5)
        assert ok.message.parts[0].text == "small"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("x" * 5000), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _reflected_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    return [s.name for s in reply.list_services_response.service]


async def test_reflection_can_be_turned_off() -> None:
    async with running_gateway() as gateway:
        assert "llmgateway.v1.ProviderService" in await _reflected_services(gateway.channel)
    config = BASE_CONFIG.replace(
        "  shutdown_grace: 2s", "  shutdown_grace: 2s\n  reflection: false"
    )
    async with running_gateway(config) as gateway:
        # No request is written: a write that races the server's answer fails on the
        # caller's side (INTERNAL) in place of the call's own status.
        stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
        code = await stub.ServerReflectionInfo(timeout=5).code()
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_keepalive_and_size_options_come_from_config() -> None:
    text = BASE_CONFIG.replace(
        "  shutdown_grace: 2s",
        "  shutdown_grace: 2s\n  max_send_message_bytes: 2048\n  keepalive:\n"
        "    time: 30s\n    timeout: 5s\n    min_client_ping_interval: 15s\n"
        "    max_connection_age: 600s\n    max_connection_age_grace: 120s",
    )
    options = dict(server_options(parse_config(text, {}).config.server))
    assert options["grpc.max_send_message_length"] == 2048
    assert options["grpc.max_receive_message_length"] == 16 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 30000
    assert options["grpc.keepalive_timeout_ms"] == 5000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 15000
    assert options["grpc.max_connection_age_ms"] == 600000
    assert options["grpc.max_connection_age_grace_ms"] == 120000
    assert options["grpc.so_reuseport"] == 0
    defaults = dict(server_options(parse_config(BASE_CONFIG, {}).config.server))
    assert "grpc.max_connection_age_ms" not in defaults
    assert defaults["grpc.keepalive_time_ms"] == 60000


def test_console_script_is_installed() -> None:
    script = f"{PYTHON.rsplit('/', 1)[0]}/llm-gateway"
    result = subprocess.run(
        [script, "check-config", "--config", "config/default.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config/default.yaml: ok"
