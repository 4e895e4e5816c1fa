"""The audit sink (bounded, never blocking, never silent) and the record builder."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import route_pb2

from service.audit.chain import GENESIS, head_of_line, verify_lines
from service.audit.record import FIELDS, build_record, rfc3339_utc
from service.audit.sink import AuditSink, FileOutput, StreamOutput
from service.auth.identity import Identity
from service.callstate import CallState
from service.errors import GatewayError, model_not_found, to_status_proto
from service.interceptors.audit import error_reason, request_id_from

WAIT = 5.0  # the longest any test waits for a thread to reach a point


class MemoryOutput:
    """Collects what the sink writes; optionally blocks or fails in write()."""

    name = "memory"

    def __init__(self, existing: bytes = b"") -> None:
        self.data = bytearray(existing)
        self.opened = 0
        self.closed = 0
        self.syncs = 0
        self.writes = 0
        self.entered = threading.Event()  # set when write() is entered
        self.release = threading.Event()  # write() waits for it when blocking
        self.blocking = False
        self.fail_next = 0

    def open(self) -> bytes | None:
        """As FileOutput does: the last complete line; a cut-off line is ended."""
        self.opened += 1
        data = bytes(self.data)
        lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)
        if data and not data.endswith(b"\n"):
            self.data += b"\n"
        return lines[-1] if lines else None

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.entered.set()
        if self.blocking:
            assert self.release.wait(WAIT), "the test never released the writer"
        if self.fail_next:
            self.fail_next -= 1
            self.data += data[: len(data) // 2]  # a torn write, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += data

    def sync(self) -> None:
        self.syncs += 1

    def close(self) -> None:
        self.closed += 1

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in bytes(self.data).splitlines()]


def _record(i: int, **extra: Any) -> dict[str, Any]:
    return {"request_id": f"r{i}", "status": "OK", **extra}


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def _entered(output: MemoryOutput) -> None:
    assert await asyncio.to_thread(output.entered.wait, WAIT), "the writer never wrote"


def _balanced(sink: AuditSink) -> None:
    assert sink.submitted == sink.written + sink.dropped + sink.discarded, sink.stats()


# --- the queue: bounded, never blocking, never silent ----------------------------------


async def test_a_blocked_writer_makes_the_sink_drop_and_count_never_block() -> None:
    output = MemoryOutput()
    output.blocking = True
    sink = AuditSink(output, queue_size=5, batch_size=100)
    await sink.start()
    sink.submit(_record(0))
    await _entered(output)  # the writer thread holds record 0 and is stuck
    for i in range(1, 21):
        sink.submit(_record(i))  # a plain call: no await, so it cannot wait
    assert sink.queued == 5
    assert sink.dropped == 15
    assert sink.written == 0
    output.release.set()
    await sink.close()
    assert sink.written == 6 and sink.dropped == 15 and sink.submitted == 21
    _balanced(sink)
    assert [r["request_id"] for r in output.records()] == [f"r{i}" for i in range(6)]


async def test_records_of_calls_ending_one_after_another_share_one_write() -> None:
    """The writer lets a batch gather for its window before handing it to its thread:
    one hand-off for records that arrive one at a time, not one each."""
    output = MemoryOutput()
    sink = AuditSink(output, batch_window=2.0)
    await sink.start()
    sink.submit(_record(0))
    for _ in range(5):  # the writer takes record 0 and starts its window
        await asyncio.sleep(0)
    sink.submit(_record(1))
    sink.submit(_record(2))
    await _until(lambda: len(output.records()) == 3)
    assert output.writes == 1
    await sink.close()
    _balanced(sink)


async def test_drops_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    output = MemoryOutput()
    output.blocking = True
    sink = AuditSink(output, queue_size=1)
    await sink.start()
    sink.submit(_record(0))
    await _entered(output)
    with caplog.at_level(logging.WARNING, logger="service.audit.sink"):
        for i in range(1, 12):
            sink.submit(_record(i, secret="do-not-log-me"))
    drops = [r for r in caplog.records if r.getMessage() == "audit records dropped"]
    assert len(drops) == 1  # once, then at most every DROP_LOG_INTERVAL
    assert sink.dropped == 10
    assert "do-not-log-me" not in caplog.text
    output.release.set()
    await sink.close()
    _balanced(sink)


async def test_close_drains_everything_in_order_and_syncs() -> None:
    output = MemoryOutput()
    sink = AuditSink(output, batch_size=7)
    await sink.start()
    for i in range(1000):
        sink.submit(_record(i))
    await sink.close()
    assert sink.written == 1000 and sink.dropped == 0
    assert [r["request_id"] for r in output.records()] == [f"r{i}" for i in range(1000)]
    assert output.syncs >= 1 and output.closed >= 1
    sink.submit(_record(1000))  # too late: counted, not lost silently
    assert sink.dropped == 1
    _balanced(sink)


async def test_close_waits_for_calls_still_ending() -> None:
    output = MemoryOutput()
    sink = AuditSink(output)
    await sink.start()
    sink.begin_call()

    async def late_record() -> None:
        await asyncio.sleep(0.05)
        sink.submit(_record(1))
        sink.end_call()

    ending = asyncio.create_task(late_record())
    await sink.close()
    await ending
    assert sink.open_calls == 0
    assert output.records() == [_record(1, seq=1)]
    _balanced(sink)


async def test_close_is_bounded_when_the_writer_hangs(caplog: pytest.LogCaptureFixture) -> None:
    output = MemoryOutput()
    output.blocking = True
    sink = AuditSink(output, close_timeout=0.2)
    await sink.start()
    sink.submit(_record(0))
    await _entered(output)
    sink.submit(_record(1))
    sink.begin_call()  # a call that never ends
    with caplog.at_level(logging.WARNING, logger="service.audit.sink"):
        # Bounded by its close_timeout: a close that hung would fail here.
        await asyncio.wait_for(sink.close(), 10)
    assert sink.written == 0 and sink.dropped == 2
    _balanced(sink)
    assert "calls still in flight" in caplog.text
    assert "could not write the remaining records in time" in caplog.text
    output.release.set()  # lets the thread end


async def test_a_failed_write_is_counted_logged_once_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    output = MemoryOutput()
    output.fail_next = 2
    sink = AuditSink(output, batch_size=3, hash_chain=True)
    await sink.start()
    with caplog.at_level(logging.INFO, logger="service.audit.sink"):
        for batch in range(4):
            for i in range(3):
                sink.submit(_record(batch * 3 + i, prompt="secret prompt text"))
            await _until(lambda: sink.written + sink.dropped == (batch + 1) * 3)  # noqa: B023
        await sink.close()
    assert sink.write_errors == 2
    assert sink.dropped == 6 and sink.written == 6
    _balanced(sink)
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1
    assert "writing again" in caplog.text
    assert "secret prompt text" not in caplog.text
    assert output.opened == 3  # reopened after each failure
    # The torn lines stay broken lines; the chain resumes from the last whole record.
    lines = bytes(output.data).splitlines(keepends=True)
    last = [json.loads(line) for line in lines[-6:]]
    assert [r["request_id"] for r in last] == [f"r{i}" for i in range(6, 12)]
    whole = [head_of_line(line) for line in lines[:-6]]
    resumed_from = [h for h in whole if h is not None][-1:] or [GENESIS]
    assert last[0]["prev_hash"] == resumed_from[0]
    assert verify_lines(lines[-6:], start=last[0]["prev_hash"]).records == 6
    assert not verify_lines(lines).ok  # the torn lines are visible


async def test_a_record_that_cannot_be_encoded_is_dropped_alone() -> None:
    output = MemoryOutput()
    sink = AuditSink(output, batch_size=10)
    sink.submit(_record(0))
    sink.submit(_record(1, bad=object()))
    sink.submit(_record(2, bad=float("inf")))
    sink.submit(_record(3))
    await sink.start()  # records queued before start are written once it runs
    await sink.close()
    assert [r["request_id"] for r in output.records()] == ["r0", "r3"]
    assert sink.written == 2 and sink.dropped == 2
    _balanced(sink)


async def test_without_a_path_records_are_counted_but_go_nowhere() -> None:
    sink = AuditSink.from_config(config_pb2.AuditConfig())
    await sink.start()
    for i in range(3):
        sink.submit(_record(i))
    await sink.close()
    assert sink.discarded == 3 and sink.written == 0 and sink.dropped == 0
    _balanced(sink)


async def test_records_queued_on_a_sink_never_started_are_counted_at_close() -> None:
    sink = AuditSink(MemoryOutput())
    sink.submit(_record(0))
    await sink.close()
    assert sink.dropped == 1
    _balanced(sink)


def test_from_config_picks_the_output_and_queue_size(tmp_path: Path) -> None:
    default = AuditSink.from_config(config_pb2.AuditConfig(path=str(tmp_path / "a.log")))
    assert default.queue_size == 10000 and not default.hash_chain
    chained = AuditSink.from_config(config_pb2.AuditConfig(path="-", queue_size=0, hash_chain=True))
    assert chained.queue_size == 1 and chained.hash_chain  # 0 would mean unbounded


# --- files and streams ---------------------------------------------------------------------


async def _write_file(path: Path, ids: range, chain: bool = True) -> AuditSink:
    sink = AuditSink(FileOutput(str(path)), hash_chain=chain)
    await sink.start()
    for i in ids:
        sink.submit(_record(i, labels={"k": "ü"}))
    await sink.close()
    return sink


async def test_a_chained_file_continues_its_chain_when_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    await _write_file(path, range(3))
    await _write_file(path, range(3, 5))
    with path.open("rb") as lines:
        result = verify_lines(lines)
    assert result.ok and result.records == 5
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert records[0]["prev_hash"] == GENESIS
    assert records[3]["prev_hash"] == records[2]["hash"]
    assert (path.stat().st_mode & 0o777) & ~0o640 == 0


async def test_a_cut_off_last_line_is_ended_and_stays_one_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    await _write_file(path, range(2))
    with path.open("ab") as file:
        file.write(b'{"request_id":"torn')
    await _write_file(path, range(2, 4))
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[2] == b'{"request_id":"torn\n'
    result = verify_lines(lines)
    assert result.broken_line == 3 and "not valid JSON" in result.problem
    assert verify_lines(lines[:2] + lines[3:]).ok  # the chain went on from line 2


async def test_an_unchained_file_gets_a_new_chain_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    await _write_file(path, range(2), chain=False)
    with caplog.at_level(logging.WARNING, logger="service.audit.sink"):
        await _write_file(path, range(2, 4))
    assert "a new chain starts" in caplog.text
    lines = path.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[0]) == _record(0, labels={"k": "ü"}, seq=1)
    assert verify_lines(lines[2:]).ok


async def test_an_unusable_path_fails_at_start(tmp_path: Path) -> None:
    sink = AuditSink(FileOutput(str(tmp_path / "missing-dir" / "audit.log")))
    with pytest.raises(OSError):
        await sink.start()


async def test_a_stream_output_gets_every_line_flushed() -> None:
    buffer = io.BytesIO()
    sink = AuditSink(StreamOutput(buffer), hash_chain=True)
    await sink.start()
    sink.submit(_record(0))
    sink.submit(_record(1))
    await sink.close()
    assert verify_lines(buffer.getvalue().splitlines(keepends=True)).records == 2
    assert isinstance(AuditSink.from_config(config_pb2.AuditConfig(path="-"))._output, StreamOutput)


def test_path_dash_writes_to_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    async def run() -> None:
        sink = AuditSink.from_config(config_pb2.AuditConfig(path="-"))
        await sink.start()
        sink.submit(_record(7))
        await sink.close()

    asyncio.run(run())
    out = capfdbinary.readouterr().out
    assert json.loads(out) == _record(7, seq=1)


def test_file_mode_is_not_world_readable(tmp_path: Path) -> None:
    output = FileOutput(str(tmp_path / "mode.log"))
    old = os.umask(0)
    try:
        assert output.open() is None
    finally:
        os.umask(old)
        output.close()
    assert (tmp_path / "mode.log").stat().st_mode & 0o777 == 0o640


# --- records ---------------------------------------------------------------------------


def _state(**changes: Any) -> CallState:
    state = CallState(request_id="rid-1", method="/llmgateway.v1.ProviderService/Chat")
    state.peer = "ipv4:127.0.0.1:5000"
    state.started = 100.0
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def test_a_record_has_exactly_the_agreed_fields() -> None:
    usage = route_pb2.Usage(input_tokens=12, output_tokens=34, cost_usd=0.25)
    state = _state(
        identity=Identity(
            subject="alice",
            tenant="acme",
            issuer="https://idp.example/",
            scopes=frozenset({"chat"}),
            key_id="k1",
            token_id="t-1",
        ),
        user_agent="billing/2.1 grpc-python/1.85",
        model="gpt",
        provider="openai",
        upstream_model="gpt-4o",
        attempts=2,
        fallback_used=True,
        usage=usage,
        labels={"team": "search"},
    )
    record = build_record(
        state, status="OK", reason="", ended=100.5, wall_started=0.0, streaming=False
    )
    assert tuple(record) == FIELDS
    assert record == {
        "time": "1970-01-01T00:00:00.000Z",
        "request_id": "rid-1",
        "peer": "ipv4:127.0.0.1:5000",
        "user_agent": "billing/2.1 grpc-python/1.85",
        "method": "/llmgateway.v1.ProviderService/Chat",
        "issuer": "https://idp.example/",
        "subject": "alice",
        "tenant": "acme",
        "kid": "k1",
        "jti": "t-1",
        "model": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-4o",
        "attempts": 2,
        "fallback_used": True,
        "cache_hit": False,
        "status": "OK",
        "reason": "",
        "latency_ms": 500.0,
        "ttft_ms": None,
        "input_tokens": 12,
        "output_tokens": 34,
        "cost_usd": 0.25,
        "labels": {"team": "search"},
        "provider_options": [],
    }


def test_stream_ttft_prefers_the_servicers_first_chunk_time() -> None:
    def ttft(state: CallState, seen: float | None) -> object:
        return build_record(
            state,
            status="OK",
            reason="",
            ended=101.0,
            wall_started=0.0,
            streaming=True,
            first_response_at=seen,
        )["ttft_ms"]

    assert ttft(_state(first_chunk_at=100.25), 100.5) == 250.0
    assert ttft(_state(), 100.125) == 125.0
    assert ttft(_state(), None) is None  # a stream that sent nothing


def test_a_refusal_records_the_precise_reason_and_unknowns_stay_empty() -> None:
    record = build_record(
        _state(denied_reason="token expired"),
        status="UNAUTHENTICATED",
        reason="INVALID_CREDENTIALS",
        ended=100.0,
        wall_started=1.5,
        streaming=False,
    )
    assert record["reason"] == "token expired"
    assert record["subject"] == "" and record["tenant"] == ""
    assert record["input_tokens"] == 0 and record["cost_usd"] is None
    assert record["time"] == "1970-01-01T00:00:01.500Z"
    failed = build_record(
        _state(),
        status="NOT_FOUND",
        reason="MODEL_NOT_FOUND",
        ended=100,
        wall_started=0,
        streaming=False,
    )
    assert failed["reason"] == "MODEL_NOT_FOUND"


def test_caller_chosen_strings_are_bounded() -> None:
    state = _state(method="/x/" + "m" * 5000, labels={f"k{i}": "v" * 999 for i in range(100)})
    record = build_record(
        state, status="UNIMPLEMENTED", reason="", ended=100, wall_started=0, streaming=False
    )
    assert len(record["method"]) == 256
    assert len(record["labels"]) == 64
    assert all(len(v) == 256 for v in record["labels"].values())


def test_rfc3339_has_milliseconds_and_z() -> None:
    assert rfc3339_utc(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"


# --- the interceptor's pure helpers ----------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("A.b_c:d-9", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        ("ünï", False),
    ],
)
def test_request_ids_are_kept_only_when_sane(sent: str, kept: bool) -> None:
    got = request_id_from([("authorization", "Bearer t"), ("x-request-id", sent)])
    if kept:
        assert got == sent
    else:
        assert got != sent and len(got) == 32 and int(got, 16) >= 0


def test_a_missing_request_id_gets_a_fresh_uuid() -> None:
    first, second = request_id_from(None), request_id_from([("other", "v")])
    assert first != second and len(first) == len(second) == 32


def test_error_reason_comes_from_the_status_details_trailer() -> None:
    raw = to_status_proto(model_not_found("m")).SerializeToString()
    assert error_reason([("x", "y"), ("grpc-status-details-bin", raw)]) == "MODEL_NOT_FOUND"
    assert error_reason([("grpc-status-details-bin", b"\xff\xff")]) == ""
    assert error_reason(None) == ""
    plain = to_status_proto(GatewayError(grpc.StatusCode.INTERNAL, "R", "m"))
    del plain.details[:]
    assert error_reason([("grpc-status-details-bin", plain.SerializeToString())]) == ""
