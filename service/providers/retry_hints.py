"""How long an upstream asks us to wait, from its headers. Pure (the clock is a parameter).

Order (reference §9.3): `retry-after-ms`, then `Retry-After` as seconds or an HTTP
date. Provider-specific hints (a Gemini RetryInfo body, "try again in 644ms") are read
by the adapters and passed in as fallbacks.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Mapping

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # Go writes microseconds with the micro sign
    "\u03bcs": 1e-6,  # or, from some servers, the Greek mu
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The server's wait hint in seconds, or None. `now` is Unix time."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            value = float(raw)
            return value if value >= 0 else None
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                return None
            if parsed is None:
                return None
            return max(0.0, parsed.timestamp() - now)
    return None


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """The `x-should-retry` override (OpenAI and Anthropic), when present."""
    value = headers.get("x-should-retry", "").strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def go_duration_seconds(text: str) -> float | None:
    """Go durations such as "1s", "6m0s", "150ms", "27s", "1.5s", "1h2m", "250µs" in
    seconds; None for anything else (a bare number, a negative, an unknown unit)."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group("value")) * _UNIT_SECONDS[match.group("unit")]
        position = match.end()
    return total if position == len(text) else None


def rfc3339_seconds(value: str) -> float | None:
    """An RFC 3339 time ("2026-01-01T00:01:00Z") as Unix time; UTC when it has no offset."""
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


_TEXT_HINT = re.compile(
    r"(?:try again in|retry after)\s+(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|seconds?)\b",
    re.IGNORECASE,
)


def text_hint_seconds(message: str) -> float | None:
    """ "Please try again in 644ms" / "Please retry after 6 seconds" in seconds."""
    match = _TEXT_HINT.search(message)
    if match is None:
        return None
    value = float(match.group("value"))
    return value / 1000.0 if match.group("unit") == "ms" else value
