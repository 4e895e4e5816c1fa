"""Incremental decoders for the two stream framings upstreams use. Pure.

Bytes go in as they arrive from the socket, split anywhere (inside a line, between
`\\r` and `\\n`, inside a multi-byte UTF-8 character); complete events come out.

- SSE per the WHATWG event-stream rules: `\\n`, `\\r\\n` and lone `\\r` line ends,
  comments, one optional space after the colon, multi-line `data`, a BOM, and an
  event still buffered at EOF.
- NDJSON: one JSON value per `\\n`-terminated line; the last line may lack its `\\n`.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_EVENT_BYTES = 32 * 1024 * 1024
_LINE_END = re.compile(r"\r\n|\r|\n")


class FramingError(ValueError):
    """The bytes are not valid framing (bad UTF-8, an oversized event, bad JSON)."""


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


class _Lines:
    """Splits decoded text into lines on \\n, \\r\\n or a lone \\r."""

    def __init__(self, max_line_chars: int) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buffer = ""
        self._pending_cr = False
        self._max = max_line_chars
        self._started = False

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise FramingError("the upstream sent invalid UTF-8") from exc
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if not text:
            return self._flush() if final else []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across two reads
        # The buffer holds no line end, so only the new text needs splitting.
        pieces = _LINE_END.split(text)
        pieces[0] = self._buffer + pieces[0]
        # The last piece has no line end yet; a trailing \r may still be the first half
        # of a \r\n split across two reads.
        self._buffer = pieces.pop()
        self._pending_cr = text.endswith("\r")
        lines = pieces
        if len(self._buffer) > self._max:
            raise FramingError("an upstream event is larger than the configured maximum")
        return lines + self._flush() if final else lines

    def _flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return [rest] if rest else []


class SseDecoder:
    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._lines = _Lines(max_event_bytes)
        self._max = max_event_bytes
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._has_fields = False

    def feed(self, data: bytes) -> list[SseEvent]:
        return self._process(self._lines.feed(data))

    def close(self) -> list[SseEvent]:
        """Flushes at EOF: a last event without its blank line is still dispatched."""
        events = self._process(self._lines.feed(b"", final=True))
        if self._has_fields:
            events.extend(self._dispatch())
        return events

    def _dispatch(self) -> list[SseEvent]:
        has_data = bool(self._data)
        event = SseEvent(self._event, "\n".join(self._data))
        self._event, self._data, self._size, self._has_fields = "", [], 0, False
        return [event] if has_data or event.event else []

    def _process(self, lines: list[str]) -> list[SseEvent]:
        events: list[SseEvent] = []
        for line in lines:
            if not line:
                if self._has_fields:
                    events.extend(self._dispatch())
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
                self._size += len(value)
                if self._size > self._max:
                    raise FramingError("an upstream event is larger than the configured maximum")
                self._has_fields = True
            elif name == "event":
                self._event = value
                self._has_fields = True
            elif name in ("id", "retry"):
                self._has_fields = True
        return events


class NdjsonDecoder:
    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._lines = _Lines(max_event_bytes)

    def feed(self, data: bytes) -> list[Any]:
        return self._parse(self._lines.feed(data))

    def close(self) -> list[Any]:
        return self._parse(self._lines.feed(b"", final=True))

    @staticmethod
    def _parse(lines: list[str]) -> list[Any]:
        values = []
        for line in lines:
            if not line.strip():
                continue
            try:
                values.append(json.loads(line))
            except ValueError as exc:
                raise FramingError("the upstream sent a line that is not JSON") from exc
        return values
