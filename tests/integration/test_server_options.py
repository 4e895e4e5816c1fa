"""Server options from the configuration reach the gRPC server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.config import parse_config
from service.server import MAX_METADATA_BYTES, MAX_PENDING_CALLS, server_options
from tests.support import (
    BASE_CONFIG,
    PYTHON,
    ROOT,
    chat_request,
    details_of,
    running_gateway,
    subprocess_env,
)

CHAT = "/llmgateway.v1.ProviderService/Chat"


def _audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_an_oversized_chat_is_refused_by_the_gateway_with_a_reason_and_a_record(
    tmp_path: Path,
) -> None:
    """20 MB against the default 16 MiB limit: the gateway refuses it itself, so the call
    has its reason and exactly one audit record."""
    audit = tmp_path / "audit.jsonl"
    config = BASE_CONFIG + f"audit: {{path: {json.dumps(str(audit))}}}\n"
    async with running_gateway(config) as gateway:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("x" * 20_000_000), timeout=30)
        ok = await gateway.stub.Chat(chat_request("small"), timeout=5)
        assert ok.message.parts[0].text == "small", "the gateway is still fine"
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "MESSAGE_TOO_LARGE",
    )
    limit = 16 * 1024 * 1024
    assert details.error_info.metadata["limit"] == str(limit)
    assert int(details.error_info.metadata["size"]) > 20_000_000
    assert str(limit) in details.message
    chats = [r for r in _audit_records(audit) if r["method"] == CHAT]
    assert [(r["status"], r["reason"]) for r in chats] == [
        ("RESOURCE_EXHAUSTED", "MESSAGE_TOO_LARGE"),
        ("OK", ""),
    ]


async def test_max_receive_message_bytes_is_enforced_for_every_kind_of_method(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    config = (
        BASE_CONFIG.replace(
            "  shutdown_grace: 2s", "  shutdown_grace: 2s\n  max_receive_message_bytes: 4096"
        )
        + f"audit: {{path: {json.dumps(str(audit))}}}\n"
    )
    async with running_gateway(config) as gateway:
        ok = await gateway.stub.Chat(chat_request("small"), timeout=5)
        assert ok.message.parts[0].text == "small"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request("x" * 5000), timeout=5)
        assert details_of(caught.value).error_info.reason == "MESSAGE_TOO_LARGE"
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in gateway.stub.StreamChat(chat_request("x" * 5000), timeout=5):
                pass
        assert details_of(streamed.value).error_info.reason == "MESSAGE_TOO_LARGE"
        # A bidirectional stream (reflection): its oversized message ends it the same way.
        stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
        call = stub.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="x" * 5000))
        with pytest.raises(grpc.aio.AioRpcError) as reflected:
            await call.read()
        assert details_of(reflected.value).error_info.reason == "MESSAGE_TOO_LARGE"
        # Above the transport's ceiling (four times the limit) gRPC itself refuses.
        with pytest.raises(grpc.aio.AioRpcError) as huge:
            await gateway.stub.Chat(chat_request("x" * 20_000), timeout=5)
        assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = [(r["method"].rsplit("/", 1)[1], r["reason"]) for r in _audit_records(audit)]
    assert refused == [
        ("Chat", ""),
        ("Chat", "MESSAGE_TOO_LARGE"),
        ("StreamChat", "MESSAGE_TOO_LARGE"),
        ("ServerReflectionInfo", "MESSAGE_TOO_LARGE"),
    ]


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
    # The transport's ceiling; the gateway enforces server.max_receive_message_bytes.
    assert options["grpc.max_receive_message_length"] == 4 * 16 * 1024 * 1024
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


async def test_the_metadata_limit_gives_the_same_answer_every_time() -> None:
    """Request metadata up to MAX_METADATA_BYTES is served, above it refused, every time:
    gRPC's soft and hard limits are one number (between them it refuses at random)."""
    below = (("x-padding", "a" * (MAX_METADATA_BYTES - 2048)),)
    above = (("x-padding", "a" * (MAX_METADATA_BYTES + 1024)),)
    async with running_gateway() as gateway:
        served = refused = 0
        for _ in range(20):
            reply = await gateway.stub.Chat(chat_request("under"), metadata=below, timeout=5)
            served += reply.message.parts[0].text == "under"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request("over"), metadata=above, timeout=5)
            refused += caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (served, refused) == (20, 20)
    options = dict(server_options(parse_config(BASE_CONFIG, {}).config.server))
    assert options["grpc.max_metadata_size"] == MAX_METADATA_BYTES == 96 * 1024
    assert options["grpc.absolute_max_metadata_size"] == MAX_METADATA_BYTES


def test_calls_waiting_for_the_event_loop_are_not_cancelled_by_grpc() -> None:
    """gRPC cancels calls that wait for the application over 1,000 of them (at random
    up to 3,000), before any interceptor sees them: such a call would leave no audit
    record. The server raises both limits, as one number (no random share)."""
    options = dict(server_options(parse_config(BASE_CONFIG, {}).config.server))
    assert options["grpc.server.max_pending_requests"] == MAX_PENDING_CALLS
    assert options["grpc.server.max_pending_requests_hard_limit"] == MAX_PENDING_CALLS
    assert MAX_PENDING_CALLS >= 50_000
