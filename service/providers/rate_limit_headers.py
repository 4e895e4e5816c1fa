"""The rate-limit state a provider reports in its response headers. Pure (the wall clock
is a parameter).

OpenAI and Azure OpenAI (reference §2.1, §3): `x-ratelimit-remaining-requests`,
`x-ratelimit-remaining-tokens`, and `x-ratelimit-reset-requests` /
`x-ratelimit-reset-tokens` as Go durations ("6m0s", "1s", "20ms"): the time until
that limit is whole again. The `*-tokens_usage_based` variants are ignored.

Anthropic (reference §4.6): `anthropic-ratelimit-{requests,tokens,input-tokens,
output-tokens}-remaining` and `-reset` as RFC 3339 times.

A remaining count is used only with its reset (the report holds until then); a value
that does not parse is left out, never guessed. Header names are lower case, as the
transport hands them over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.providers.retry_hints import go_duration_seconds, rfc3339_seconds

# The kinds of limit, in the order they are reported.
REQUESTS = "requests"
TOKENS = "tokens"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
KINDS = (REQUESTS, TOKENS, INPUT_TOKENS, OUTPUT_TOKENS)

_OPENAI = {REQUESTS: "requests", TOKENS: "tokens"}
_ANTHROPIC = {
    REQUESTS: "requests",
    TOKENS: "tokens",
    INPUT_TOKENS: "input-tokens",
    OUTPUT_TOKENS: "output-tokens",
}


@dataclass(frozen=True)
class ReportedLimit:
    """One limit as reported: what is left, and the seconds until it is whole again."""

    kind: str
    remaining: int
    reset_after: float


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        return None
    return int(text)


def _openai(headers: Mapping[str, str]) -> list[ReportedLimit]:
    found = []
    for kind, name in _OPENAI.items():
        remaining = _count(headers.get(f"x-ratelimit-remaining-{name}"))
        reset = go_duration_seconds(headers.get(f"x-ratelimit-reset-{name}", ""))
        if remaining is not None and reset is not None:
            found.append(ReportedLimit(kind, remaining, reset))
    return found


def _anthropic(headers: Mapping[str, str], now: float) -> list[ReportedLimit]:
    found = []
    for kind, name in _ANTHROPIC.items():
        remaining = _count(headers.get(f"anthropic-ratelimit-{name}-remaining"))
        if remaining is None:
            continue
        reset_at = rfc3339_seconds(headers.get(f"anthropic-ratelimit-{name}-reset", ""))
        if reset_at is not None:
            found.append(ReportedLimit(kind, remaining, max(0.0, reset_at - now)))
    return found


def reported_limits(headers: Mapping[str, str], now: float) -> tuple[ReportedLimit, ...]:
    """The limits the response's headers report (none for a provider that sends no
    such headers). `now` is Unix time, for Anthropic's absolute reset times."""
    if "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers:
        return tuple(_openai(headers))
    if "anthropic-ratelimit-requests-remaining" in headers or any(
        f"anthropic-ratelimit-{name}-remaining" in headers for name in _ANTHROPIC.values()
    ):
        return tuple(_anthropic(headers, now))
    return ()
