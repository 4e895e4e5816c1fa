"""Anthropic Messages: error bodies and rate-limit headers to an UpstreamFailure.

Reference §4.5, §4.6 and §9.3. An error is `{"type": "error", "error": {type, message}}`,
sent with an HTTP status or as an `error` event inside a 200 stream (whose status then
follows from the error type). Quota and context-length errors are told apart by type,
code and message; the wait before a retry comes from `retry-after`, else from the
exhausted `anthropic-ratelimit-*` limit's reset time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.providers.retry_hints import (
    retry_after_seconds,
    rfc3339_seconds,
    should_retry_header,
)
from service.providers.upstream_errors import UpstreamFailure

# The HTTP status each error type is sent with (reference §4.5), for errors that
# arrive inside a 200 stream.
_STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_CONTEXT_MESSAGES = ("prompt is too long", "exceed context limit")
_QUOTA_MESSAGES = (
    "reached your specified api usage limits",
    "spend limit",
    "credit balance is too low",
)
_QUOTA_CODES = ("enforced_spend_limit_reached",)
_RATE_LIMIT_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


def error_status(error_type: str) -> int:
    """The HTTP status an error of this type is sent with (500 for unknown types)."""
    return _STATUS_OF_TYPE.get(error_type, 500)


def rate_limit_reset_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The wait until the exhausted `anthropic-ratelimit-*` limit resets (§9.3 step 4)."""
    waits: list[float] = []
    for kind in _RATE_LIMIT_KINDS:
        if headers.get(f"anthropic-ratelimit-{kind}-remaining", "").strip() != "0":
            continue
        reset = rfc3339_seconds(headers.get(f"anthropic-ratelimit-{kind}-reset", ""))
        if reset is not None:
            waits.append(max(0.0, reset - now))
    return max(waits) if waits else None


def upstream_failure(
    provider: str,
    model: str,
    status: int,
    envelope: Any,
    headers: Mapping[str, str],
    now: float,
) -> UpstreamFailure:
    """What an error response (or an in-stream `error` event) says, for from_upstream."""
    error_type = message = error_code = request_id = ""
    if isinstance(envelope, dict):
        error = envelope.get("error")
        if isinstance(error, dict):
            error_type = str(error.get("type") or "")
            message = str(error.get("message") or "")
            details = error.get("details")
            if isinstance(details, dict):
                error_code = str(details.get("error_code") or "")
        request_id = str(envelope.get("request_id") or "")
    lowered = message.lower()
    context = status < 500 and any(text in lowered for text in _CONTEXT_MESSAGES)
    quota = (
        status == 402
        or error_type == "billing_error"
        or error_code in _QUOTA_CODES
        or (status < 500 and any(text in lowered for text in _QUOTA_MESSAGES))
    )
    retry_after = retry_after_seconds(headers, now)
    if retry_after is None:
        retry_after = rate_limit_reset_seconds(headers, now)
    return UpstreamFailure(
        provider,
        model,
        status,
        upstream_type=error_type,
        upstream_code=error_code,
        upstream_message=message,
        request_id=headers.get("request-id", "") or request_id,
        retry_after=retry_after,
        context_length_exceeded=context,
        quota_exhausted=quota and not context,
        should_retry=should_retry_header(headers),
    )
