"""Turns an upstream failure into a GatewayError: code, reason, retry and failover.

Pure: no I/O. Shared by every provider adapter (and by the mock provider, which
simulates upstream statuses), so one table decides what each failure means.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from service.errors import GatewayError
from service.providers.upstream_explain import MAX_PARAM_CHARS, explanation, shown_for


@dataclass(frozen=True)
class UpstreamFailure:
    """What is known about a failed upstream response."""

    provider: str
    model: str
    http_status: int
    upstream_type: str = ""  # e.g. "rate_limit_error", "RESOURCE_EXHAUSTED"
    upstream_code: str = ""  # e.g. "context_length_exceeded", "insufficient_quota"
    request_id: str = ""
    retry_after: float | None = None
    context_length_exceeded: bool = False
    quota_exhausted: bool = False
    content_filtered: bool = False  # the provider refused the prompt by policy
    auth_failed: bool = False  # the gateway's own key was refused, whatever the status
    failed_precondition: bool = False  # e.g. billing or region not enabled (Gemini)
    should_retry: bool | None = None  # the x-should-retry header, when sent
    # The provider's own words, raw: passed on (sanitized) only for the caller's mistakes.
    upstream_message: str = ""
    upstream_param: str = ""  # the request field the provider named, when it named one


@dataclass(frozen=True)
class _Rule:
    code: grpc.StatusCode
    reason: str
    message: str
    retryable: bool
    failover: bool


_BY_STATUS: dict[int, _Rule] = {
    400: _Rule(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
        "the provider rejected the request",
        False,
        False,
    ),
    401: _Rule(
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_AUTH_FAILED",
        "the provider rejected the gateway's own credentials",
        False,
        True,
    ),
    402: _Rule(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        "the gateway's account at the provider is out of quota",
        False,
        True,
    ),
    403: _Rule(
        grpc.StatusCode.PERMISSION_DENIED,
        "UPSTREAM_PERMISSION_DENIED",
        "the provider refused access to this model",
        False,
        True,
    ),
    404: _Rule(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        "the provider does not know this model or deployment",
        False,
        True,
    ),
    408: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
        "the provider timed out",
        True,
        True,
    ),
    409: _Rule(
        grpc.StatusCode.ABORTED,
        "UPSTREAM_CONFLICT",
        "the provider reported a conflict",
        True,
        True,
    ),
    413: _Rule(
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
        "the request is too large for the provider",
        False,
        False,
    ),
    422: _Rule(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_INVALID_REQUEST",
        "the provider rejected the request",
        False,
        False,
    ),
    429: _Rule(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "the provider's rate limit was reached",
        True,
        True,
    ),
    500: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_INTERNAL",
        "the provider had an internal error",
        True,
        True,
    ),
    502: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_BAD_GATEWAY",
        "the provider's gateway failed",
        True,
        True,
    ),
    503: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        "the provider is unavailable",
        True,
        True,
    ),
    504: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_TIMEOUT",
        "the provider timed out",
        True,
        True,
    ),
    529: _Rule(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_OVERLOADED",
        "the provider is overloaded",
        True,
        True,
    ),
}

_OTHER_4XX = _Rule(
    grpc.StatusCode.INVALID_ARGUMENT,
    "UPSTREAM_CLIENT_ERROR",
    "the provider rejected the request",
    False,
    False,
)
_OTHER_5XX = _Rule(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR", "the provider failed", True, True)
_CONTEXT = _Rule(
    grpc.StatusCode.INVALID_ARGUMENT,
    "CONTEXT_LENGTH_EXCEEDED",
    "the conversation is longer than the model's context window",
    False,
    False,
)
_QUOTA = _BY_STATUS[402]
_FILTERED = _Rule(
    grpc.StatusCode.INVALID_ARGUMENT,
    "CONTENT_FILTERED",
    "the provider refused the prompt by its content policy",
    False,
    False,
)


_PRECONDITION = _Rule(
    grpc.StatusCode.FAILED_PRECONDITION,
    "UPSTREAM_FAILED_PRECONDITION",
    "the provider account is not set up for this request",
    False,
    True,
)


def _rule_for(failure: UpstreamFailure) -> _Rule:
    if failure.auth_failed:
        return _BY_STATUS[401]
    if failure.failed_precondition:
        return _PRECONDITION
    if failure.context_length_exceeded:
        return _CONTEXT
    if failure.content_filtered:
        return _FILTERED
    if failure.quota_exhausted:
        return _QUOTA
    rule = _BY_STATUS.get(failure.http_status)
    if rule is not None:
        return rule
    return _OTHER_5XX if failure.http_status >= 500 else _OTHER_4XX


def from_upstream(failure: UpstreamFailure) -> GatewayError:
    """Maps an upstream failure to the gateway's error (DESIGN §3, reference §9.2)."""
    rule = _rule_for(failure)
    retryable = rule.retryable
    if failure.should_retry is not None and not failure.quota_exhausted:
        retryable = failure.should_retry
    metadata = {
        "provider": failure.provider,
        "model": failure.model,
        "upstreamStatus": str(failure.http_status),
    }
    for key, value in (
        ("upstreamType", failure.upstream_type),
        ("upstreamCode", failure.upstream_code),
        ("upstreamRequestId", failure.request_id),
    ):
        if value:
            metadata[key] = value
    message = f"{failure.provider}: {rule.message} (HTTP {failure.http_status})"
    said = _explanation(failure)
    if said:
        message = f"{message}: {said}"
        metadata["upstreamMessage"] = said
        param = explanation(failure.upstream_param, MAX_PARAM_CHARS)
        if param:
            metadata["upstreamParam"] = param
    # A wait hint only helps the caller when waiting can succeed.
    retry_after = failure.retry_after if retryable else None
    return GatewayError(
        rule.code,
        rule.reason,
        message,
        metadata=metadata,
        retry_after=retry_after,
        retryable=retryable,
        failover=rule.failover,
    )


def _explanation(failure: UpstreamFailure) -> str:
    """The provider's explanation, sanitized, when it is the caller's to read."""
    allowed = shown_for(
        failure.http_status,
        auth_failed=failure.auth_failed,
        quota_exhausted=failure.quota_exhausted,
        failed_precondition=failure.failed_precondition,
        context_length_exceeded=failure.context_length_exceeded,
        content_filtered=failure.content_filtered,
    )
    return explanation(failure.upstream_message) if allowed else ""


def transport_failure(provider: str, model: str, kind: str, detail: str = "") -> GatewayError:
    """A failure below HTTP: connect refused, timeout, reset, protocol breakage.

    `kind` is one of "connect", "timeout", "reset", "protocol", "too_large".
    """
    reasons = {
        "connect": ("UPSTREAM_CONNECT_FAILED", "could not connect to the provider", True),
        "timeout": ("UPSTREAM_TIMEOUT", "the provider did not answer in time", True),
        "reset": ("UPSTREAM_CONNECTION_LOST", "the connection to the provider was lost", True),
        "protocol": ("UPSTREAM_PROTOCOL_ERROR", "the provider sent a malformed response", False),
        "too_large": ("UPSTREAM_RESPONSE_TOO_LARGE", "the provider's response is too large", False),
    }
    reason, message, retryable = reasons[kind]
    code = (
        grpc.StatusCode.INTERNAL
        if kind in ("protocol", "too_large")
        else grpc.StatusCode.UNAVAILABLE
    )
    metadata = {"provider": provider, "model": model}
    if detail:
        metadata["detail"] = detail
    return GatewayError(
        code,
        reason,
        f"{provider}: {message}",
        metadata=metadata,
        retryable=retryable,
        failover=True,
    )


def pool_exhausted(provider: str, model: str, waited: float) -> GatewayError:
    """Every pooled connection to the provider stayed busy for the whole bounded wait.
    The gateway's own limit, not the provider's health: another deployment may serve the
    call, the breaker does not count it, and the caller may come back shortly."""
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "POOL_EXHAUSTED",
        f"{provider}: every connection to the provider is busy",
        metadata={"provider": provider, "model": model},
        retry_after=max(waited, 0.1),
        retryable=False,
        failover=True,
        upstream_fault=False,
    )


def stream_truncated(provider: str, model: str) -> GatewayError:
    """The upstream stream ended before its terminator: never a clean finish."""
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_STREAM_TRUNCATED",
        f"{provider}: the stream ended before the provider finished it",
        metadata={"provider": provider, "model": model},
        retryable=True,
        failover=True,
    )


def empty_stream(provider: str, model: str) -> GatewayError:
    """The upstream answered 200 and then ended its stream without any output: no text,
    no tool call, no finish reason. OpenAI-compatible servers (llama.cpp) answer a
    prompt longer than their context this way, so it says as much about the request as
    about the deployment: tried once more, then the next deployment, and never counted
    against the breaker (one caller's request must not shut a model for everyone)."""
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_EMPTY_STREAM",
        f"{provider}: the stream ended without any output"
        " (some servers answer a prompt longer than their context this way)",
        metadata={"provider": provider, "model": model},
        retryable=True,
        failover=True,
        upstream_fault=False,
    )
