"""Google Gemini API: error bodies (a google.rpc.Status in JSON) to GatewayError.

Reference §5.6. An error arrives as `{"error": {code, message, status, details}}`, sometimes
wrapped in a one-element list, with an HTTP status, inside a 200 stream, or as a 200 JSON
body where a stream was expected (which the transport reports as 502). The body's code or
status name then decides; `details` may carry ErrorInfo (the reason) and RetryInfo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.errors import GatewayError
from service.providers.retry_hints import (
    go_duration_seconds,
    retry_after_seconds,
    should_retry_header,
    text_hint_seconds,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream

REQUEST_ID_HEADER = "x-request-id"

_CONTEXT_LENGTH = re.compile(
    r"exceeds the maximum number of tokens|input token count .*exceeds|context (length|window)",
    re.IGNORECASE,
)
_API_KEY_INVALID = re.compile(r"api key not valid", re.IGNORECASE)
_TYPE_PREFIX = "type.googleapis.com/google.rpc."
# google.rpc.Code names and their HTTP equivalents, for error bodies without a code.
_HTTP_BY_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def error_envelope(value: Any) -> Mapping[str, Any] | None:
    """The `error` object of a google.rpc.Status body, also when wrapped in a list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping) and isinstance(value.get("error"), Mapping):
        error: Mapping[str, Any] = value["error"]
        return error
    return None


def _detail(details: list[Any], type_name: str) -> Mapping[str, Any] | None:
    for detail in details:
        if isinstance(detail, Mapping) and detail.get("@type") == _TYPE_PREFIX + type_name:
            return detail
    return None


def _violation_field(details: list[Any]) -> str:
    """The field the first google.rpc.BadRequest violation names, or ""."""
    bad_request = _detail(details, "BadRequest")
    violations = bad_request.get("fieldViolations") if bad_request else None
    if isinstance(violations, list) and violations and isinstance(violations[0], Mapping):
        return str(violations[0].get("field") or "")
    return ""


def upstream_error(
    provider: str,
    model: str,
    http_status: int,
    error: Mapping[str, Any] | None,
    headers: Mapping[str, str],
    now: float,
) -> GatewayError:
    """Maps a Gemini error (envelope or not) through the shared table."""
    error = error or {}
    message = str(error.get("message") or "")
    status_name = str(error.get("status") or "")
    details = error.get("details")
    details = details if isinstance(details, list) else []
    info = _detail(details, "ErrorInfo")
    reason = str(info.get("reason") or "") if info else ""
    body_code = error.get("code")
    status = http_status
    if http_status in (200, 502):
        # An error inside a 200 stream (200), or a 200 JSON error where a stream was
        # expected, which the transport reports as 502: the body knows better.
        if isinstance(body_code, int) and 400 <= body_code <= 599:
            status = body_code
        elif status_name in _HTTP_BY_STATUS:
            status = _HTTP_BY_STATUS[status_name]
        elif http_status == 200:
            status = 500
    retry_after = retry_after_seconds(headers, now)
    if retry_after is None:
        retry_info = _detail(details, "RetryInfo")
        if retry_info is not None:
            retry_after = go_duration_seconds(str(retry_info.get("retryDelay") or ""))
    if retry_after is None and message:
        retry_after = text_hint_seconds(message)
    auth_failed = reason == "API_KEY_INVALID" or (
        status == 400 and bool(_API_KEY_INVALID.search(message))
    )
    gateway_error = from_upstream(
        UpstreamFailure(
            provider=provider,
            model=model,
            http_status=status,
            upstream_type=status_name,
            upstream_code=reason,
            upstream_message=message,
            upstream_param=_violation_field(details),
            request_id=headers.get(REQUEST_ID_HEADER, ""),
            retry_after=retry_after,
            context_length_exceeded=status == 400 and bool(_CONTEXT_LENGTH.search(message)),
            should_retry=should_retry_header(headers),
            auth_failed=auth_failed,
            failed_precondition=status_name == "FAILED_PRECONDITION",
        )
    )
    return gateway_error
