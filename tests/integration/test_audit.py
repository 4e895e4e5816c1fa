"""The audit log end to end: one record per RPC whatever its fate, request ids both ways,
no secrets or prompts, records that survive SIGTERM, and `verify-audit` on a real log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import chat_pb2, embed_pb2, models_pb2, provider_service_pb2_grpc

from service.audit.chain import verify_lines
from service.audit.cli import verify_main
from service.audit.record import FIELDS, SEQUENCE_FIELD
from service.audit.sink import AuditSink, FileOutput
from service.callstate import call_state
from service.interceptors.audit import AuditInterceptor
from tests.support import (
    BASE_CONFIG,
    PYTHON,
    ROOT,
    chat_request,
    details_of,
    gateway_process,
    running_gateway,
)

PROMPT = "PROMPT-zq9 the secret plan is blue"
TOKEN = "secret-token-value"
AUTHORIZATION = ("authorization", f"Bearer {TOKEN}")
CHAT = "/llmgateway.v1.ProviderService/Chat"
STREAM = "/llmgateway.v1.ProviderService/StreamChat"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HEX_ID = re.compile(r"[0-9a-f]{32}")
# The deadline of the calls that run into theirs. The gateway ends such a call 10 % of
# its budget (at most 0.25 s) before the caller's own timer would, so that its status
# and request id reach the caller first: 2.5 s leaves the full 0.25 s on a loaded machine.
DEADLINE = 2.5


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _audit_config(path: Path) -> str:
    return BASE_CONFIG + f"audit: {{path: {json.dumps(str(path))}, hash_chain: true}}\n"


@dataclass
class Outcome:
    code: grpc.StatusCode
    request_id: str  # what came back: a unary call's trailers, a stream's headers


def _ids(metadata: Any) -> list[str]:
    return [str(v) for k, v in (metadata or ()) if k == "x-request-id"]


def _returned_id(metadata: Any) -> str:
    ids = _ids(metadata)
    assert len(ids) == 1, metadata
    return ids[0]


async def _returned(call: Any) -> str:
    """A stream's request id: with the response headers, or with the trailers when no
    response came. A call that ran out of time on the caller's side got neither: ""."""
    initial = await call.initial_metadata()
    if _ids(initial):
        return _returned_id(initial)
    return await _trailed(call)


async def _trailed(call: Any) -> str:
    """The request id in the trailers, exactly once ("" for a call that ran out of time
    on the caller's side and so got no trailers from the server)."""
    trailing = await call.trailing_metadata()
    if await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not any(
        k == "x-request-id" for k, _ in (trailing or ())
    ):
        return ""
    return _returned_id(trailing)


async def _unary(call: Any) -> Outcome:
    """A unary call's outcome: its request id travels in the trailers, whatever the
    status, and never in the headers."""
    try:
        await call
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        code = error.code()
    assert _ids(await call.initial_metadata()) == [], "unary: the id is in the trailers"
    return Outcome(code, await _trailed(call))


async def _stream(call: Any, cancel_after: int | None = None) -> Outcome:
    received = 0
    try:
        async for _ in call:
            received += 1
            if received == cancel_after:
                returned = await _returned(call)
                call.cancel()
                return Outcome(grpc.StatusCode.CANCELLED, returned)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        code = error.code()
    return Outcome(code, await _returned(call))


def _md(request_id: str | None, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    base = (AUTHORIZATION, *extra)
    return base if request_id is None else (("x-request-id", request_id), *base)


async def test_every_rpc_gets_exactly_one_record_with_its_status(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    async with running_gateway(_audit_config(path)) as gateway:
        stub, channel = gateway.stub, gateway.channel
        health = health_pb2_grpc.HealthStub(channel)
        raw_chat = channel.unary_unary(CHAT)  # no serializer: bytes go as they are
        unknown = channel.unary_unary("/llmgateway.v1.ProviderService/NoSuchMethod")
        labelled = chat_request(PROMPT, labels={"team": "audit"})
        stall = ("x-mock-stall", "5")
        stall_after_one = (("x-mock-after-chunks", "1"), ("x-mock-stall", "10"))
        cases: dict[str, tuple[str | None, grpc.StatusCode, Any]] = {
            # name: (sent x-request-id, expected code, the call)
            "chat": (
                "id-chat",
                grpc.StatusCode.OK,
                lambda md: _unary(stub.Chat(labelled, metadata=md, timeout=5)),
            ),
            "stream": (
                "id-stream",
                grpc.StatusCode.OK,
                lambda md: _stream(stub.StreamChat(chat_request(PROMPT), metadata=md, timeout=5)),
            ),
            "embed": (
                "id.embed:1",
                grpc.StatusCode.OK,
                lambda md: _unary(
                    stub.Embed(
                        embed_pb2.EmbedRequest(model="mock-embed", inputs=[PROMPT]),
                        metadata=md,
                        timeout=5,
                    )
                ),
            ),
            "models": (
                "id-models",
                grpc.StatusCode.OK,
                lambda md: _unary(
                    stub.ListModels(models_pb2.ListModelsRequest(), metadata=md, timeout=5)
                ),
            ),
            "stats": (
                "id-stats",
                grpc.StatusCode.OK,
                lambda md: _unary(
                    stub.GetProviderStats(
                        models_pb2.GetProviderStatsRequest(), metadata=md, timeout=5
                    )
                ),
            ),
            "health": (
                "id-health",
                grpc.StatusCode.OK,
                lambda md: _unary(
                    health.Check(health_pb2.HealthCheckRequest(), metadata=md, timeout=5)
                ),
            ),
            "no messages": (
                "id-bad",
                grpc.StatusCode.INVALID_ARGUMENT,
                lambda md: _unary(
                    stub.Chat(chat_pb2.ChatRequest(model="mock"), metadata=md, timeout=5)
                ),
            ),
            "undecodable": (
                "id-bytes",
                grpc.StatusCode.INVALID_ARGUMENT,
                lambda md: _unary(raw_chat(b"\xff\xff\xff", metadata=md, timeout=5)),
            ),
            "unknown model": (
                "id-model",
                grpc.StatusCode.NOT_FOUND,
                lambda md: _unary(
                    stub.Chat(chat_request(PROMPT, model="no-such"), metadata=md, timeout=5)
                ),
            ),
            "upstream 503": (
                "id-503",
                grpc.StatusCode.UNAVAILABLE,
                lambda md: _unary(
                    stub.Chat(
                        chat_request(PROMPT),
                        metadata=(*md, ("x-mock-fail-status", "503")),
                        timeout=5,
                    )
                ),
            ),
            "unknown method": (
                "id-unimpl",
                grpc.StatusCode.UNIMPLEMENTED,
                lambda md: _unary(unknown(b"", metadata=md, timeout=5)),
            ),
            "cancelled stream": (
                "id-cancel",
                grpc.StatusCode.CANCELLED,
                lambda md: _stream(
                    stub.StreamChat(
                        chat_request("a b c"), metadata=(*md, *stall_after_one), timeout=20
                    ),
                    cancel_after=1,
                ),
            ),
            "unary deadline": (
                "id-late",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                lambda md: _unary(
                    stub.Chat(chat_request(PROMPT), metadata=(*md, stall), timeout=DEADLINE)
                ),
            ),
            "stream deadline": (
                "id-late-stream",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                lambda md: _stream(
                    stub.StreamChat(
                        chat_request("a b c"), metadata=(*md, *stall_after_one), timeout=DEADLINE
                    )
                ),
            ),
            "no id": (
                None,
                grpc.StatusCode.OK,
                lambda md: _unary(stub.Chat(chat_request(PROMPT), metadata=md, timeout=5)),
            ),
            "insane id": (
                "bad id; drop table",
                grpc.StatusCode.OK,
                lambda md: _unary(stub.Chat(chat_request(PROMPT), metadata=md, timeout=5)),
            ),
        }
        outcomes = dict(
            zip(
                cases,
                await asyncio.gather(*(run(_md(sent)) for sent, _, run in cases.values())),
                strict=True,
            )
        )
        sink = gateway.server.audit
    assert (sink.submitted, sink.written, sink.dropped) == (len(cases), len(cases), 0)

    for name, (sent, expected, _) in cases.items():
        assert outcomes[name].code == expected, name
        if sent is not None and name != "insane id":
            assert outcomes[name].request_id == sent, name
        else:
            assert HEX_ID.fullmatch(outcomes[name].request_id), (name, outcomes[name])

    text = path.read_text()
    records = _records(path)
    assert len(records) == len(cases)
    by_id = {r["request_id"]: r for r in records}
    assert len(by_id) == len(cases), "request ids are unique, one record each"
    for name, (_, expected, _) in cases.items():
        record = by_id[outcomes[name].request_id]
        assert record["status"] == expected.name, (name, record)
        assert tuple(k for k in record if k not in ("hash", "prev_hash")) == tuple(
            sorted((*FIELDS, SEQUENCE_FIELD))
        )
        assert TIME.fullmatch(record["time"]), record["time"]
        assert record["peer"].startswith(("ipv4:", "ipv6:")), record["peer"]
        assert record["subject"] in ("", "anonymous")
        assert record["latency_ms"] > 0
    assert PROMPT not in text and "PROMPT-zq9" not in text, "prompts and completions never"
    assert TOKEN not in text and "Bearer" not in text, "authorization metadata never"
    with path.open("rb") as lines:
        assert verify_lines(lines).records == len(cases)

    def record(name: str) -> dict[str, Any]:
        return by_id[outcomes[name].request_id]

    chat, stream = record("chat"), record("stream")
    assert chat["method"] == CHAT and stream["method"] == STREAM
    assert (chat["model"], chat["provider"], chat["upstream_model"]) == (
        "mock",
        "mock",
        "mock-echo-1",
    )
    assert chat["attempts"] == 1 and chat["input_tokens"] > 0 and chat["output_tokens"] > 0
    assert chat["labels"] == {"team": "audit"}
    assert chat["ttft_ms"] is None and chat["reason"] == ""
    assert stream["ttft_ms"] is not None and 0 <= stream["ttft_ms"] <= stream["latency_ms"]
    assert stream["output_tokens"] > 0
    assert record("embed")["model"] == "mock-embed"
    assert record("health")["method"] == "/grpc.health.v1.Health/Check"
    assert record("no messages")["reason"] == "INVALID_REQUEST"
    assert record("undecodable")["reason"] == "MALFORMED_REQUEST"
    assert record("unknown model")["reason"] == "MODEL_NOT_FOUND"
    assert record("unknown model")["model"] == "no-such"
    assert record("upstream 503")["reason"] == "UPSTREAM_UNAVAILABLE"
    assert record("unknown method")["method"].endswith("/NoSuchMethod")
    assert record("unary deadline")["latency_ms"] >= 200  # it waited for its deadline
    assert record("cancelled stream")["ttft_ms"] is not None


async def test_the_request_id_reaches_the_call_state_and_the_servicer(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    async with running_gateway(_audit_config(path)) as gateway:
        call = gateway.stub.Chat(chat_request(), metadata=(("x-request-id", "trace-42"),))
        response = await call
        assert _returned_id(await call.trailing_metadata()) == "trace-42"
        generated = gateway.stub.Chat(chat_request())
        second = await generated
        returned = _returned_id(await generated.trailing_metadata())
    assert response.id == "chat-trace-42"
    assert second.id == f"chat-{returned}", "one generated id, shared with the servicer"
    assert [r["request_id"] for r in _records(path)] == ["trace-42", returned]


async def test_unary_calls_return_the_id_in_the_trailers_and_streams_in_the_headers() -> None:
    """Unary calls: in the trailers exactly once, whatever the outcome (beside the retry
    pushback of an error that has one); streams: with the first response's headers, or
    in the trailers of a stream that fails before any response."""
    async with running_gateway() as gateway:
        stub = gateway.stub
        ok = stub.Chat(chat_request(), metadata=(("x-request-id", "u-ok"),), timeout=5)
        assert (await _unary(ok)).request_id == "u-ok"
        bad = stub.Chat(chat_request(model="nope"), metadata=(("x-request-id", "u-bad"),))
        assert await _unary(bad) == Outcome(grpc.StatusCode.NOT_FOUND, "u-bad")
        hint = (("x-mock-fail-status", "429"), ("x-mock-retry-after", "2"))
        limited = stub.Chat(chat_request(), metadata=(("x-request-id", "u-429"), *hint))
        assert await _unary(limited) == Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "u-429")
        trailing = await limited.trailing_metadata()
        assert [v for k, v in trailing if k == "grpc-retry-pushback-ms"] == ["2000"]
        # The health servicer aborts with no trailers of its own: the id is still there.
        health = health_pb2_grpc.HealthStub(gateway.channel)
        unknown = health.Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"),
            metadata=(("x-request-id", "u-health"),),
            timeout=5,
        )
        assert await _unary(unknown) == Outcome(grpc.StatusCode.NOT_FOUND, "u-health")

        stream = stub.StreamChat(chat_request(), metadata=(("x-request-id", "s-ok"),), timeout=5)
        assert [c async for c in stream]
        assert _ids(await stream.initial_metadata()) == ["s-ok"]
        assert _ids(await stream.trailing_metadata()) == []
        failed = stub.StreamChat(
            chat_request(), metadata=(("x-request-id", "s-503"), ("x-mock-fail-status", "503"))
        )
        assert await _stream(failed) == Outcome(grpc.StatusCode.UNAVAILABLE, "s-503")
        assert _ids(await failed.initial_metadata()) == []


async def test_a_gateway_without_audit_path_counts_records() -> None:
    async with running_gateway() as gateway:
        await gateway.stub.ListModels(models_pb2.ListModelsRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await gateway.stub.Chat(chat_request(model="nope"))
        sink = gateway.server.audit
    assert sink.submitted == 2 and sink.discarded == 2
    assert sink.written == 0 and sink.dropped == 0


# --- the interceptor around a service of its own: the hard endings -----------------------


async def _sleep_forever(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(30)  # ignores its deadline: the server's core cancels it
    return b""


async def _boom(request: bytes, context: Any) -> bytes:
    raise RuntimeError("internal detail that must not leak")


async def _set_code(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("nothing here")
    return b""


async def _who_am_i(request: bytes, context: Any) -> bytes:
    state = call_state()
    assert state is not None
    return state.request_id.encode()


async def _flood(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(10_000):  # bounded; flow control stops it long before
        yield b"x" * (1 << 20)


async def _writer(request: bytes, context: Any) -> None:
    for part in (b"a", b"b"):
        await context.write(part)


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _count(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return str(len([r async for r in requests])).encode()


TOY: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "Sleep": grpc.unary_unary_rpc_method_handler(_sleep_forever),
    "Boom": grpc.unary_unary_rpc_method_handler(_boom),
    "SetCode": grpc.unary_unary_rpc_method_handler(_set_code),
    "WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i),
    "Flood": grpc.unary_stream_rpc_method_handler(_flood),
    "Writer": grpc.unary_stream_rpc_method_handler(_writer),
    "Echo": grpc.stream_stream_rpc_method_handler(_echo),
    "Count": grpc.stream_unary_rpc_method_handler(_count),
}


@contextlib.asynccontextmanager
async def _toy_server(path: Path) -> AsyncIterator[tuple[grpc.aio.Channel, AuditSink]]:
    sink = AuditSink(FileOutput(str(path)))
    await sink.start()
    server = grpc.aio.server(interceptors=[AuditInterceptor(sink)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("toy.Toy", TOY),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, sink
    finally:
        await channel.close()
        await server.stop(0)
        await sink.close()


async def test_hard_endings_each_get_one_record(tmp_path: Path) -> None:
    path = tmp_path / "toy.log"
    async with _toy_server(path) as (channel, sink):

        def unary(name: str) -> Callable[..., Any]:
            return channel.unary_unary(f"/toy.Toy/{name}")

        async def code_of(call: Any) -> grpc.StatusCode:
            return (await _unary(call)).code

        # 1 s: dispatched (and so recorded) before it expires, even on a busy machine.
        assert (
            await code_of(unary("Sleep")(b"", timeout=1, metadata=(("x-request-id", "sleep"),)))
            == grpc.StatusCode.DEADLINE_EXCEEDED
        )
        with pytest.raises(grpc.aio.AioRpcError) as boom:
            await unary("Boom")(b"", metadata=(("x-request-id", "boom"),), timeout=5)
        assert boom.value.code() == grpc.StatusCode.INTERNAL
        assert details_of(boom.value).error_info.reason == "INTERNAL"
        assert "must not leak" not in (boom.value.details() or "")
        assert (
            await code_of(unary("SetCode")(b"", metadata=(("x-request-id", "setcode"),), timeout=5))
            == grpc.StatusCode.NOT_FOUND
        )
        who = unary("WhoAmI")(b"", metadata=(("x-request-id", "me"),), timeout=5)
        assert await who == b"me"
        assert (await _unary(who)).request_id == "me"
        # An unexpected exception, and a code set without an abort: the id is in the
        # trailers, once.
        assert _ids(boom.value.trailing_metadata()) == ["boom"]
        setcode = unary("SetCode")(b"", metadata=(("x-request-id", "setcode-2"),), timeout=5)
        assert await _unary(setcode) == Outcome(grpc.StatusCode.NOT_FOUND, "setcode-2")

        flood = channel.unary_stream("/toy.Toy/Flood")(
            b"", metadata=(("x-request-id", "flood"),), timeout=10
        )
        assert len(await flood.read()) == 1 << 20
        await asyncio.sleep(0.2)  # the server is now blocked sending, not in the handler
        flood.cancel()

        writer = channel.unary_stream("/toy.Toy/Writer")(
            b"", metadata=(("x-request-id", "writer"),), timeout=5
        )
        assert [m async for m in writer] == [b"a", b"b"]

        echo = channel.stream_stream("/toy.Toy/Echo")(
            metadata=(("x-request-id", "echo"),), timeout=5
        )
        await echo.write(b"1")
        assert await echo.read() == b"1"
        await echo.done_writing()
        assert await echo.read() is grpc.aio.EOF
        assert _returned_id(await echo.initial_metadata()) == "echo"

        count = channel.stream_unary("/toy.Toy/Count")(
            iter([b"a", b"b", b"c"]), metadata=(("x-request-id", "count"),), timeout=5
        )
        assert await count == b"3"
    assert (sink.submitted, sink.written, sink.dropped) == (9, 9, 0)
    by_id = {r["request_id"]: r for r in _records(path)}
    assert {k: r["status"] for k, r in by_id.items()} == {
        "sleep": "DEADLINE_EXCEEDED",
        "boom": "INTERNAL",
        "setcode": "NOT_FOUND",
        "setcode-2": "NOT_FOUND",
        "me": "OK",
        "flood": "CANCELLED",
        "writer": "OK",
        "echo": "OK",
        "count": "OK",
    }
    assert by_id["boom"]["reason"] == "INTERNAL"
    assert by_id["flood"]["ttft_ms"] is not None and by_id["writer"]["ttft_ms"] is None
    assert by_id["echo"]["ttft_ms"] is not None and by_id["count"]["ttft_ms"] is None
    assert "must not leak" not in path.read_text()


# --- a real process: SIGTERM with calls in flight, then verify-audit -------------------------

PROCESS_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 3s}}
auth: {{disabled: true}}
audit: {{path: {path}, hash_chain: true, queue_size: 1000}}
providers:
  - name: mock
    mock: {{token_delay: 0.05s}}
models:
  - {{alias: mock, provider: mock}}
"""


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "service", "verify-audit", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_records_survive_sigterm_and_the_log_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "audit.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(PROCESS_CONFIG.format(port=0, path=json.dumps(str(log_path))))
    short = " ".join(f"w{i}" for i in range(10))  # 10 x 50 ms: ends well within the 3 s grace
    long = " ".join(f"w{i}" for i in range(200))  # 10 s: cut by the shutdown
    with gateway_process(config, tmp_path) as gateway:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
            await stub.ListModels(
                models_pb2.ListModelsRequest(), metadata=(("x-request-id", "before"),), timeout=5
            )
            streams = {
                f"s{i}": stub.StreamChat(
                    chat_request(short),
                    metadata=(("x-request-id", f"s{i}"), AUTHORIZATION),
                    timeout=20,
                )
                for i in range(4)
            }
            streams["cut"] = stub.StreamChat(
                chat_request(long), metadata=(("x-request-id", "cut"),), timeout=20
            )
            for stream in streams.values():
                assert (await stream.read()).text_delta == "w0"

            gateway.process.send_signal(signal.SIGTERM)

            results = {}
            for name, stream in streams.items():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    while await stream.read() is not grpc.aio.EOF:
                        pass
                results[name] = await stream.code()
            exit_code = await asyncio.to_thread(gateway.process.wait, 15)
        assert exit_code == 0, gateway.logs()
        logs = gateway.logs()
    assert all(results[f"s{i}"] == grpc.StatusCode.OK for i in range(4)), results
    assert results["cut"] != grpc.StatusCode.OK
    records = _records(log_path)
    statuses = {r["request_id"]: r["status"] for r in records}
    assert len(records) == 6
    assert statuses == {
        "before": "OK",
        **{f"s{i}": "OK" for i in range(4)},
        "cut": "CANCELLED",
    }
    assert TOKEN not in log_path.read_text() and "w1 w2" not in log_path.read_text()
    assert '"audit log closed"' in logs and '"written": 6' in logs and '"dropped": 0' in logs

    verified = await asyncio.to_thread(_verify, log_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[0] == "ok: 6 records"

    lines = log_path.read_bytes().splitlines(keepends=True)
    edited = [*lines[:2], lines[2].replace(b'"status":"OK"', b'"status":"NO"'), *lines[3:]]
    for name, tampered, broken in [
        ("edited", edited, 3),
        ("deleted", [*lines[:3], *lines[4:]], 4),
        ("swapped", [lines[0], lines[2], lines[1], *lines[3:]], 2),
    ]:
        copy = tmp_path / f"{name}.log"
        copy.write_bytes(b"".join(tampered))
        # The command's own code, in this process: one more interpreter start-up per case
        # would only add time (the real command ran above).
        code = verify_main(str(copy))
        stdout = capsys.readouterr().out
        assert code == 1, (name, stdout)
        assert f"line {broken}:" in stdout, (name, stdout)
    assert verify_main(str(tmp_path / "no-such.log")) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("chain", [True, False])
async def test_a_gateway_appends_to_its_own_log_across_restarts(
    tmp_path: Path, chain: bool
) -> None:
    path = tmp_path / "audit.log"
    config = _audit_config(path).replace("hash_chain: true", f"hash_chain: {str(chain).lower()}")
    for _ in range(2):
        async with running_gateway(config) as gateway:
            await gateway.stub.ListModels(models_pb2.ListModelsRequest())
    assert len(_records(path)) == 2
    with path.open("rb") as lines:
        assert verify_lines(lines).ok is chain
