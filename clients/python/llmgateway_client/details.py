"""Decoding the google.rpc error details the gateway sends with every error."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None  # seconds, from RetryInfo
    field_violations: dict[str, str] = field(default_factory=dict)  # BadRequest
    quota_violations: dict[str, str] = field(default_factory=dict)  # QuotaFailure


def error_details(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """The call's status with its ErrorInfo, RetryInfo, BadRequest and QuotaFailure."""
    raw = next(
        (value for key, value in (error.trailing_metadata() or ()) if key == DETAILS_KEY), None
    )
    details = ErrorDetails(code=error.code(), message=error.details() or "")
    if not isinstance(raw, bytes):
        return details
    status = status_pb2.Status.FromString(raw)
    values: dict[str, object] = {}
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        bad = error_details_pb2.BadRequest()
        quota = error_details_pb2.QuotaFailure()
        if packed.Unpack(info):
            values.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif packed.Unpack(retry):
            values["retry_after"] = retry.retry_delay.ToNanoseconds() / 1e9
        elif packed.Unpack(bad):
            values["field_violations"] = {v.field: v.description for v in bad.field_violations}
        elif packed.Unpack(quota):
            values["quota_violations"] = {v.subject: v.description for v in quota.violations}
    return ErrorDetails(code=error.code(), message=error.details() or "", **values)  # type: ignore[arg-type]
