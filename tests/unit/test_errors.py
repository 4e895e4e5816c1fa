"""The one mapping from GatewayError to google.rpc.Status, and the upstream table."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from service.errors import (
    DOMAIN,
    FieldViolation,
    GatewayError,
    QuotaViolation,
    model_not_found,
    printable,
    to_rpc_status,
    to_status_proto,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream


def _unpack(status: object) -> dict[str, object]:
    found: dict[str, object] = {}
    for detail in status.details:  # type: ignore[attr-defined]
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(cls.DESCRIPTOR):
                value = cls()
                detail.Unpack(value)
                assert cls.__name__ not in found
                found[cls.__name__] = value
    return found


def test_status_carries_exactly_one_error_info_and_the_rest() -> None:
    error = GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "slow down",
        metadata={"provider": "p"},
        retry_after=1.25,
        field_violations=[FieldViolation("a", "bad")],
        quota_violations=[QuotaViolation("subject:alice", "rpm")],
    )
    status = to_status_proto(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    details = _unpack(status)
    info = details["ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED",
        DOMAIN,
        {"provider": "p"},
    )  # type: ignore[attr-defined]
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 1250  # type: ignore[attr-defined]
    assert details["BadRequest"].field_violations[0].field == "a"  # type: ignore[attr-defined]
    assert details["QuotaFailure"].violations[0].subject == "subject:alice"  # type: ignore[attr-defined]
    grpc_status = to_rpc_status(error)
    assert grpc_status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status.details == "slow down"
    assert list(grpc_status.trailing_metadata) == [
        ("grpc-status-details-bin", status.SerializeToString()),
        ("grpc-retry-pushback-ms", "1250"),
    ]


@pytest.mark.parametrize(
    ("retry_after", "pushback"),
    [(0.0, "0"), (0.0004, "1"), (0.3, "300"), (1.0000001, "1001"), (59.9, "59900")],
)
def test_retry_pushback_is_the_retry_info_delay_rounded_up_to_whole_milliseconds(
    retry_after: float, pushback: str
) -> None:
    error = GatewayError(grpc.StatusCode.UNAVAILABLE, "X", "x", retry_after=retry_after)
    trailers = dict(to_rpc_status(error).trailing_metadata)
    assert trailers["grpc-retry-pushback-ms"] == pushback


def test_no_retry_info_no_pushback() -> None:
    status = to_rpc_status(GatewayError(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", "x"))
    assert [key for key, _ in status.trailing_metadata] == ["grpc-status-details-bin"]


def test_plain_error_has_only_error_info() -> None:
    status = to_status_proto(GatewayError(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", "x"))
    assert list(_unpack(status)) == ["ErrorInfo"]


@pytest.mark.parametrize(
    ("http", "code", "reason", "retryable", "failover"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", False, False),
        (401, grpc.StatusCode.INTERNAL, "UPSTREAM_AUTH_FAILED", False, True),
        (402, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_QUOTA_EXHAUSTED", False, True),
        (403, grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_PERMISSION_DENIED", False, True),
        (404, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", False, True),
        (408, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT", True, True),
        (409, grpc.StatusCode.ABORTED, "UPSTREAM_CONFLICT", True, True),
        (413, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", False, False),
        (418, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_CLIENT_ERROR", False, False),
        (422, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", False, False),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", True, True),
        (500, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_INTERNAL", True, True),
        (502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BAD_GATEWAY", True, True),
        (503, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", True, True),
        (504, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_TIMEOUT", True, True),
        (529, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_OVERLOADED", True, True),
        (599, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR", True, True),
    ],
)
def test_upstream_status_table(
    http: int, code: grpc.StatusCode, reason: str, retryable: bool, failover: bool
) -> None:
    error = from_upstream(UpstreamFailure("p", "m", http, request_id="req-1", retry_after=3.0))
    assert (error.code, error.reason, error.retryable, error.failover) == (
        code,
        reason,
        retryable,
        failover,
    )
    assert error.metadata == {
        "provider": "p",
        "model": "m",
        "upstreamStatus": str(http),
        "upstreamRequestId": "req-1",
    }
    assert error.retry_after == (3.0 if retryable else None)
    assert "req-1" not in error.message


def test_quota_exhausted_429_is_never_retried() -> None:
    error = from_upstream(
        UpstreamFailure(
            "p",
            "m",
            429,
            upstream_code="insufficient_quota",
            quota_exhausted=True,
            should_retry=True,
        )
    )
    assert (error.code, error.reason, error.retryable) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_QUOTA_EXHAUSTED",
        False,
    )
    assert error.metadata["upstreamCode"] == "insufficient_quota"


def test_context_length_and_should_retry_header() -> None:
    context = from_upstream(UpstreamFailure("p", "m", 400, context_length_exceeded=True))
    assert context.reason == "CONTEXT_LENGTH_EXCEEDED" and not context.retryable
    assert from_upstream(UpstreamFailure("p", "m", 500, should_retry=False)).retryable is False
    assert from_upstream(UpstreamFailure("p", "m", 400, should_retry=True)).retryable is True


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("gpt-4o", "gpt-4o"),
        ("a\r\nb", "a\\r\\nb"),
        ("nul\0tab\t", "nul\\x00tab\\t"),
        ("esc\x1b[2J", "esc\\x1b[2J"),
        ("line\u2028sep\u202eltr", "line\\u2028sep\\u202eltr"),
        ("x" * 128, "x" * 128),
        ("x" * 129, "x" * 125 + "..."),
        ("\n" * 100, "\\n" * 62 + "..."),
    ],
)
def test_printable_escapes_controls_and_bounds_length(name: str, shown: str) -> None:
    assert printable(name) == shown
    assert len(printable(name)) <= 128


def test_a_hostile_model_name_is_shown_escaped_and_cut() -> None:
    error = model_not_found("evil\r\nINFO forged line" + "y" * 10_000)
    assert "\n" not in error.message and "\r" not in error.message
    assert error.metadata["model"] == printable("evil\r\nINFO forged line" + "y" * 10_000)
    assert len(error.metadata["model"]) == 128
    assert error.message.startswith('model "evil\\r\\nINFO forged line')
