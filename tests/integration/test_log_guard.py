"""Header values that are not UTF-8, sent over raw HTTP/2 (no gRPC client sends them):
grpc's own logger quotes such a value (`Invalid encoding on b'Bearer eyJ…'`) at ERROR
with a traceback, several times per call. No record leaving the gateway — its own or a
library's — may carry the token or any header value, and repeats are limited, counted
and reported. Checked on the records of a gateway served in this process (at DEBUG,
through a guarded handler like the service's) and on the stderr of a real one."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.logs import BURST, LOG_GUARD, JsonFormatter, guarded
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.fakes.raw_http2 import raw_grpc_call
from tests.support import chat_request, free_port, gateway_process, running_gateway

CHAT = "/llmgateway.v1.ProviderService/Chat"
UNAUTHENTICATED = 16
NOTE = b"header-value-marker-5b0e2d"
CALLS = 8
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}
logging: {{level: debug}}
metrics: {{port: {metrics_port}}}
auth:
  issuers:
    - {{issuer: guard, audiences: [llm-gateway], algorithms: [HS256], secret_env: GUARD_SECRET}}
providers:
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: mock, provider: mock}}
"""
INVALID_ENCODING = "Invalid encoding on %s"  # grpc._cython.cygrpc's template


def token() -> str:
    return sign(claims("guard", sub="mallory"), HS_SECRET, "HS256")


def hostile_metadata(bearer: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"authorization", b"Bearer " + bearer.encode() + b"\xff\xfe"),
        (b"x-note", NOTE + b"\xff"),
    ]


async def hostile_calls(port: int, bearer: str) -> None:
    request = chat_request("hello").SerializeToString()
    for _ in range(CALLS):
        reply = await asyncio.to_thread(
            raw_grpc_call, port, CHAT, hostile_metadata(bearer), request
        )
        # The mangled token is refused: the call itself is fine.
        assert reply.grpc_status == UNAUTHENTICATED, reply


def assert_nothing_quoted(text: str, bearer: str) -> None:
    for part in (bearer, *bearer.split(".")):
        assert part not in text
    assert "Bearer eyJ" not in text
    assert NOTE.decode() not in text
    assert "\\xff" not in text and "\xff" not in text


@contextlib.contextmanager
def quiet_http2_client() -> Iterator[None]:
    """The test's own HTTP/2 client logs every header it encodes at DEBUG: not the
    gateway's records, so they are left out of what is checked."""
    loggers = [logging.getLogger(name) for name in ("hpack", "h2")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _Count(logging.Filter):
    """On grpc's logger: every record of the template, before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.produced += record.msg == INVALID_ENCODING
        return True


async def test_an_in_process_gateway_writes_no_header_value_and_limits_repeats() -> None:
    captured = io.StringIO()
    handler = guarded(logging.StreamHandler(captured))
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    counter = _Count()
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    grpc_logger.addFilter(counter)
    suppressed_before = LOG_GUARD.suppressed
    bearer = token()
    try:
        config = CONFIG.format(port=0, metrics_port=0)
        with quiet_http2_client():
            async with running_gateway(config, environ={"GUARD_SECRET": HS_SECRET}) as gateway:
                await hostile_calls(gateway.port, bearer)
    finally:
        grpc_logger.removeFilter(counter)
        root.removeHandler(handler)
        root.setLevel(level)
    text = captured.getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    assert {"service.audit.sink", "grpc._cython.cygrpc"} <= {r["logger"] for r in records}
    assert_nothing_quoted(text, bearer)
    quoted = [r for r in records if r["message"].startswith("Invalid encoding on")]
    assert 1 <= len(quoted) <= BURST, "repeats are limited"
    for record in quoted:
        assert record["level"] == "error"
        assert record["message"].endswith(" bytes withheld>")
        assert record["error"] == "UnicodeDecodeError (traceback withheld: it quotes a value)"
    # Both values of every call were quoted; each record is written or counted.
    assert counter.produced >= 2 * CALLS
    assert len(quoted) + LOG_GUARD.suppressed - suppressed_before == counter.produced


def _metric(text: str, name: str) -> float:
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def test_a_gateway_process_writes_no_header_value_and_reports_what_it_held_back(
    tmp_path: Path,
) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(port=port, metrics_port=metrics_port))
    bearer = token()
    env = {"GUARD_SECRET": HS_SECRET}
    with gateway_process(config, tmp_path, port, extra_env=env) as gateway:
        with quiet_http2_client():
            await hostile_calls(port, bearer)
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0
        text = gateway.logs()
    assert_nothing_quoted(text, bearer)
    records: list[dict[str, Any]] = [
        json.loads(line) for line in text.splitlines() if line.startswith("{")
    ]
    quoted = [r for r in records if r["message"].startswith("Invalid encoding on")]
    assert len(quoted) == BURST, "at least two per call were made, at most BURST written"
    suppressed = _metric(scraped.text, "llm_gateway_log_records_suppressed_total")
    assert suppressed >= 2 * CALLS - BURST
    assert _metric(scraped.text, "llm_gateway_log_records_redacted_total") >= 2 * CALLS
    summaries = [r for r in records if r["message"] == "log records suppressed"]
    assert summaries, "what was held back is reported at shutdown"
    assert sum(s["suppressed"] for s in summaries) == suppressed
    held = next(s for s in summaries if s["source_logger"] == "grpc._cython.cygrpc")
    assert (held["source_level"], held["template"]) == ("error", INVALID_ENCODING)
