"""JSON-lines logging to stderr, guarded so that no record carries a credential.

The gateway's own records are never given tokens, keys or prompts. Libraries' records
are another matter: grpc logs `Invalid encoding on b'Bearer eyJ…'` — a caller's whole
header value — at ERROR with a traceback, several times per call, whenever a metadata
value is not UTF-8, so an outsider could also flood the log with it. `LogGuard`, a filter
on the handler (so it sees every logger's records, libraries' included), therefore:

- withholds every bytes argument of a library's record (header values reach libraries'
  loggers as bytes) and drops such a record's traceback;
- masks what looks like a credential in any record's text, the gateway's own included
  (bearer and basic credentials, JWTs, provider keys, API-key headers);
- lets at most `burst` records of one kind (logger, level, message template) through per
  `window` seconds when they come from a library and are warnings or worse or had to be
  masked, counting the rest: the next one let through says how many were suppressed
  before it (`suppressed` field), the gateway logs a summary of what is pending every
  window and on shutdown (`report_suppressed`), and the totals are metrics.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OWN_LOGGER = "service"
BURST = 5
WINDOW = 60.0
MAX_KINDS = 1000
# A record the guard has judged carries its verdict, so that a second guarded handler
# (or a second guard) gives the same answer and counts nothing twice.
_VERDICT = "_log_guard_verdict"

_CREDENTIALS = (
    # JWTs: base64url of '{"' then two more dot-separated parts.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,2}"), "[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{12,}"), r"\1\2[redacted]"),
    # OpenAI and Anthropic (sk-…), Google (AIza…) keys.
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted]"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "[redacted]"),
    (
        re.compile(
            r"(?i)\b((?:x-)?api-key|x-goog-api-key|authorization|cookie)"
            r"(['\"]?\s*[:=,]\s*b?['\"]?)[^'\"\s,)]{12,}"
        ),
        r"\1\2[redacted]",
    ),
)


def redact(text: str) -> str:
    """`text` with whatever looks like a credential masked."""
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text


def _holds_bytes(value: object, depth: int = 3) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    if depth and isinstance(value, tuple | list):  # header (name, value) pairs, lists of them
        return any(_holds_bytes(item, depth - 1) for item in value)
    return False


def _withheld(value: object) -> tuple[object, bool]:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>", True
    if _holds_bytes(value):
        return "<bytes withheld>", True
    return value, False


def _without_bytes(args: Any) -> tuple[Any, bool]:
    """A record's arguments with every bytes value withheld, and whether there was one."""
    if isinstance(args, tuple):
        pairs = [_withheld(a) for a in args]
        return tuple(v for v, _ in pairs), any(w for _, w in pairs)
    if isinstance(args, Mapping):
        pairs_by_key = {k: _withheld(v) for k, v in args.items()}
        return {k: v for k, (v, _) in pairs_by_key.items()}, any(
            w for _, w in pairs_by_key.values()
        )
    return args, False


@dataclass
class _Kind:
    """One kind of record within the current window."""

    started: float
    let_through: int = 0
    suppressed: int = 0
    template: str = ""


@dataclass
class Suppressed:
    """Records of one kind held back since the last report."""

    logger: str
    level: str
    template: str
    count: int


class LogGuard(logging.Filter):
    """The filter described above. Thread-safe: records come from any thread."""

    def __init__(
        self,
        burst: int = BURST,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self.suppressed = 0  # records held back, ever
        self.redacted = 0  # records whose text or arguments were masked, ever
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        verdict = getattr(record, _VERDICT, None)
        if verdict is None:
            verdict = self._judge(record)
            setattr(record, _VERDICT, verdict)
        return bool(verdict)

    # --- masking -----------------------------------------------------------------------

    def _judge(self, record: logging.LogRecord) -> bool:
        library = not (record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + "."))
        template = str(record.msg)
        masked = self._mask(record, library)
        if masked:
            with self._lock:
                self.redacted += 1
        if library and (masked or record.levelno >= logging.WARNING):
            return self._admit(record, template)
        return True

    def _mask(self, record: logging.LogRecord, library: bool) -> bool:
        """Masks the record in place; True when something had to be masked."""
        withheld = False
        if library:
            record.args, withheld = _without_bytes(record.args)
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: keep the template alone
            message, withheld = str(record.msg), True
        text = redact(message)
        masked = withheld or text != message
        if masked:
            record.msg, record.args = text, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if isinstance(value, str) and (clean := redact(value)) != value:
                    fields[key], masked = clean, True
        if record.exc_info:
            kind = record.exc_info[0]
            if withheld and kind is not None:
                record.exc_text = f"{kind.__name__} (traceback withheld: it quotes a value)"
            else:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        if record.exc_text and (clean := redact(record.exc_text)) != record.exc_text:
            record.exc_text, masked = clean, True
        return masked

    # --- rate limit --------------------------------------------------------------------

    def _admit(self, record: logging.LogRecord, template: str) -> bool:
        key = (record.name, record.levelno, template)
        now = self.clock()
        with self._lock:
            if key not in self._kinds and len(self._kinds) >= MAX_KINDS:
                # Messages formatted before logging make a kind each: past the cap, the
                # rest of a logger's records at that level share one.
                key = (record.name, record.levelno, "(others)")
            kind = self._kinds.get(key)
            carried = 0
            if kind is None or now - kind.started >= self.window:
                carried = kind.suppressed if kind is not None else 0
                kind = self._kinds[key] = _Kind(started=now, template=key[2])
            if kind.let_through >= self.burst:
                kind.suppressed += 1
                self.suppressed += 1
                return False
            kind.let_through += 1
        if carried:
            extra = getattr(record, "fields", None)
            record.fields = {**(extra if isinstance(extra, dict) else {}), "suppressed": carried}
        return True

    def take_suppressed(self) -> list[Suppressed]:
        """What was held back and not yet reported, by kind; it is then reported."""
        taken: list[Suppressed] = []
        with self._lock:
            for (logger, level, _), kind in self._kinds.items():
                if kind.suppressed:
                    taken.append(
                        Suppressed(
                            logger,
                            logging.getLevelName(level).lower(),
                            redact(kind.template),
                            kind.suppressed,
                        )
                    )
                    kind.suppressed = 0
            # Kinds whose window has passed with nothing pending are forgotten.
            now = self.clock()
            for key in [
                k
                for k, kind in self._kinds.items()
                if not kind.suppressed and now - kind.started >= self.window
            ]:
                del self._kinds[key]
        return taken


LOG_GUARD = LogGuard()
log = logging.getLogger(__name__)


def report_suppressed(guard: LogGuard = LOG_GUARD) -> int:
    """Logs one summary per kind of record held back since the last report; returns how
    many records they stand for."""
    total = 0
    for held in guard.take_suppressed():
        total += held.count
        log.warning(
            "log records suppressed",
            extra={
                "fields": {
                    "source_logger": held.logger,
                    "source_level": held.level,
                    "template": held.template[:200],
                    "suppressed": held.count,
                }
            },
        )
    return total


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str)


def guarded(handler: logging.Handler, guard: LogGuard = LOG_GUARD) -> logging.Handler:
    """The handler, with the guard among its filters."""
    if guard not in handler.filters:
        handler.addFilter(guard)
    return handler


def setup_logging(level: str = "info") -> None:
    handler = guarded(logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
