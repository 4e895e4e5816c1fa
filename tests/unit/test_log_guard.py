"""The log guard: values withheld, credentials masked, library repeats limited and
counted, on a fake clock."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from service.logs import JsonFormatter, LogGuard, guarded, redact, report_suppressed

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, guard: LogGuard) -> None:
        self.guard = guard
        self.out = io.StringIO()
        self.handler = guarded(logging.StreamHandler(self.out), guard)
        self.handler.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.handler.handle(record)

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


def record(
    name: str, msg: str, *args: object, level: int = logging.ERROR, exc: bool = False
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            b"\xff".decode()
        except UnicodeDecodeError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def harness(clock: Clock) -> Iterator[Harness]:
    yield Harness(LogGuard(burst=3, window=60.0, clock=clock))


def test_a_library_record_quoting_a_header_value_is_withheld(harness: Harness) -> None:
    value = b"Bearer " + JWT.encode() + b"\xff"
    harness.emit(record("grpc._cython.cygrpc", "Invalid encoding on %s", value, exc=True))
    [written] = harness.records()
    assert written["message"] == f"Invalid encoding on <{len(value)} bytes withheld>"
    assert written["error"] == "UnicodeDecodeError (traceback withheld: it quotes a value)"
    assert "eyJ" not in harness.out.getvalue()
    assert harness.guard.redacted == 1


def test_header_pairs_holding_bytes_are_withheld_whole(harness: Harness) -> None:
    pair = (b"x-note", b"private-value-\xff")
    harness.emit(record("hpack.hpack", "Adding %s to the header table", pair, level=logging.DEBUG))
    harness.emit(record("lib", "headers %s", [pair], level=logging.DEBUG))
    assert "private-value" not in harness.out.getvalue()
    assert [r["message"] for r in harness.records()] == [
        "Adding <bytes withheld> to the header table",
        "headers <bytes withheld>",
    ]


def test_credentials_are_masked_in_every_record_the_gateways_own_included(
    harness: Harness,
) -> None:
    own = record("service.auth", "refused %s", f"Bearer {JWT}", level=logging.INFO)
    own.fields = {"method": f"/x/{JWT}", "count": 3}
    harness.emit(own)
    harness.emit(record("httpx", "sent api-key: %s", "abcdefghijklmnop", level=logging.INFO))
    harness.emit(record("some.lib", "key sk-ant-api03-abcdefghijk in %s", "x"))
    text = harness.out.getvalue()
    for secret in (JWT, "abcdefghijklmnop", "sk-ant-api03-abcdefghijk"):
        assert secret not in text
    first, second, third = harness.records()
    assert first["message"] == "refused Bearer [redacted]"
    assert (first["method"], first["count"]) == ("/x/[redacted]", 3)
    assert second["message"] == "sent api-key: [redacted]"
    assert third["message"] == "key [redacted] in x"


def test_tracebacks_are_masked_too(harness: Harness) -> None:
    try:
        raise ValueError(f"upstream said: invalid key sk-proj-abcdefghijklmnop for {JWT}")
    except ValueError:
        own = logging.LogRecord(
            "service.server", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    harness.emit(own)
    [written] = harness.records()
    error = str(written["error"])
    assert error.startswith("Traceback (most recent call last):")
    assert "ValueError: upstream said: invalid key [redacted] for [redacted]" in error
    assert harness.guard.redacted == 1


@pytest.mark.parametrize(
    "text",
    [
        "callers need a bearer token; for development: python -m service token",
        "authorization: missing",
        "listening on 127.0.0.1:50051",
        "sk-short",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_library_repeats_are_limited_per_window_and_counted(harness: Harness, clock: Clock) -> None:
    for _ in range(10):
        harness.emit(record("grpc._cython.cygrpc", "Invalid encoding on %s", b"\xff"))
    assert len(harness.records()) == 3
    assert harness.guard.suppressed == 7
    # Another kind has its own allowance; the gateway's own warnings are never held back.
    harness.emit(record("grpc._cython.cygrpc", "other %s", "x", level=logging.WARNING))
    for _ in range(5):
        harness.emit(record("service.server", "closing failed", level=logging.ERROR))
    assert len(harness.records()) == 3 + 1 + 5
    # The next window: let through again, saying how many were held back before it.
    clock.now += 60.0
    harness.emit(record("grpc._cython.cygrpc", "Invalid encoding on %s", b"\xff"))
    assert harness.records()[-1]["suppressed"] == 7
    assert harness.guard.suppressed == 7


def test_library_info_records_are_not_limited(harness: Harness) -> None:
    for i in range(10):
        harness.emit(record("httpx", "HTTP Request: POST %s", f"http://x/{i}", level=logging.INFO))
    assert len(harness.records()) == 10
    assert harness.guard.suppressed == 0


def test_two_guarded_handlers_count_a_record_once(harness: Harness) -> None:
    second = Harness(harness.guard)
    for _ in range(5):
        rec = record("grpc", "Invalid encoding on %s", b"\xff")
        harness.emit(rec)
        second.emit(rec)
    assert len(harness.records()) == len(second.records()) == 3
    assert harness.guard.suppressed == 2


def test_held_back_records_are_reported_once(harness: Harness, clock: Clock) -> None:
    for _ in range(5):
        harness.emit(record("grpc", "Invalid encoding on %s", b"\xff"))
    for _ in range(4):
        harness.emit(record("asyncio", "Task was destroyed: %s", "t", level=logging.WARNING))
    reports = Harness(LogGuard())
    own = logging.getLogger("service.logs")
    own.addHandler(reports.handler)
    try:
        assert report_suppressed(harness.guard) == 2 + 1
        assert report_suppressed(harness.guard) == 0, "reported once"
    finally:
        own.removeHandler(reports.handler)
    summaries = {r["source_logger"]: r for r in reports.records()}
    assert summaries["grpc"]["suppressed"] == 2
    assert summaries["grpc"]["template"] == "Invalid encoding on %s"
    assert summaries["grpc"]["source_level"] == "error"
    assert summaries["asyncio"]["suppressed"] == 1


def test_kinds_are_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.logs.MAX_KINDS", 4)
    harness = Harness(LogGuard(burst=1, window=60.0, clock=clock))
    for i in range(20):
        harness.emit(record("lib", f"preformatted message {i}", level=logging.WARNING))
    # Four kinds of their own, then every other message shares one allowance.
    assert len(harness.records()) == 4 + 1
    assert harness.guard.suppressed == 15
