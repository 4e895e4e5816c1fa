"""The one typed error of the service and its one mapping to google.rpc.Status.

Every failure inside the gateway is a GatewayError. Only the servicer turns it into
a gRPC status, through `to_rpc_status`, so that code, message and details always
agree (clients' `rpc_status.from_call` rejects a Status that differs from the call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.callstate import call_state

DOMAIN = "llm-gateway.local"
REQUEST_ID_KEY = "x-request-id"
# gRFC A6: a gRPC client's own retry policy waits this long (whole milliseconds) before
# its next attempt. Sent with every status that carries RetryInfo, with the same delay.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, as google.rpc.BadRequest.FieldViolation."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded limit, as google.rpc.QuotaFailure.Violation."""

    subject: str
    description: str


class GatewayError(Exception):
    """A failure with everything needed to report it and to decide what to do next.

    `retryable`: the same deployment may be tried again (transient failure).
    `failover`: another deployment may be tried.
    `upstream_fault`: the failure says something about the deployment's health, so a
    failover counts against its circuit breaker. False for failures of the gateway's
    own making (no free pooled connection) or of the caller's request shape.
    `local`: raised before any upstream request was sent (a provider's request
    transform refused the call): it counts as no attempt and tried no deployment.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        retryable: bool = False,
        failover: bool = False,
        upstream_fault: bool = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.retryable = retryable
        self.failover = failover
        self.upstream_fault = upstream_fault
        self.local = False

    def with_metadata(self, **entries: str) -> GatewayError:
        """Adds ErrorInfo metadata (keys in lowerCamelCase) and returns self."""
        self.metadata.update(entries)
        return self

    def copy(self) -> GatewayError:
        """The same error as a new object, for one failure reported to several calls
        (each may add its own metadata)."""
        copied = GatewayError(
            self.code,
            self.reason,
            self.message,
            metadata=self.metadata,
            retry_after=self.retry_after,
            field_violations=self.field_violations,
            quota_violations=self.quota_violations,
            retryable=self.retryable,
            failover=self.failover,
            upstream_fault=self.upstream_fault,
        )
        copied.local = self.local
        return copied

    def __repr__(self) -> str:
        return f"GatewayError({self.code.name}, {self.reason!r}, {self.message!r})"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status_proto(error: GatewayError) -> status_pb2.Status:
    """Builds the google.rpc.Status for an error: exactly one ErrorInfo, then the rest."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=DOMAIN, metadata=dict(sorted(error.metadata.items()))
            )
        )
    ]
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(_delay_ns(error.retry_after))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=details)


def to_rpc_status(error: GatewayError) -> grpc.Status:
    """The grpc.Status to end a call with (`context.abort_with_status`). Its trailers
    carry the details, the retry pushback when the error has a RetryInfo, and the call's
    request id (an error has no response headers)."""
    status = rpc_status.to_status(to_status_proto(error))
    trailers: list[tuple[str, str | bytes]] = list(status.trailing_metadata)
    if error.retry_after is not None:
        trailers.append((RETRY_PUSHBACK_KEY, str(retry_pushback_ms(error.retry_after))))
    state = call_state()
    if state is not None:
        trailers.append((REQUEST_ID_KEY, state.request_id))
    return _Status(code=status.code, details=status.details, trailing_metadata=tuple(trailers))


def _delay_ns(retry_after: float) -> int:
    return max(0, round(retry_after * 1e9))


def retry_pushback_ms(retry_after: float) -> int:
    """The RetryInfo delay as gRFC A6 pushback: whole milliseconds, rounded up so that a
    client never comes back before the delay."""
    return -(-_delay_ns(retry_after) // 1_000_000)


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


# Constructors for the errors the gateway itself raises. Upstream failures are
# built in service/providers/upstream_errors.py.


def invalid_argument(violations: Sequence[FieldViolation]) -> GatewayError:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        f"{first.field}: {first.description}{more}",
        field_violations=violations,
    )


SHOWN_NAME_CHARS = 128
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name: str, limit: int = SHOWN_NAME_CHARS) -> str:
    """A caller's name as safe to put in a status message, ErrorInfo metadata or a log
    line: every character that is not printable (CR, LF, NUL, other controls, line and
    paragraph separators, bidirectional overrides) escaped as in a Python literal, and
    the result cut to `limit` characters, ending "..." when it was cut."""
    parts: list[str] = []
    length = 0
    for char in name:
        part = char if char.isprintable() else _ESCAPES.get(char) or ascii(char)[1:-1]
        parts.append(part)
        length += len(part)
        if length > limit:
            break
    else:
        return "".join(parts)
    kept: list[str] = []
    length = 0
    for part in parts:  # whole escapes only, leaving room for the "..."
        if length + len(part) > limit - 3:
            break
        kept.append(part)
        length += len(part)
    return "".join(kept) + "..."


def unsupported_capability(field: str, alias: str, capability: str) -> GatewayError:
    shown = printable(alias)
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CAPABILITY_UNSUPPORTED",
        f'{field}: model "{shown}" does not support {capability}',
        metadata={"model": shown, "capability": capability},
        field_violations=[FieldViolation(field, f'model "{shown}" does not support {capability}')],
    )


def model_not_found(alias: str) -> GatewayError:
    shown = printable(alias)
    return GatewayError(
        grpc.StatusCode.NOT_FOUND,
        "MODEL_NOT_FOUND",
        f'model "{shown}" is not configured; ListModels shows the available ones',
        metadata={"model": shown},
    )


def deadline_exceeded(attempts: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        "the call's deadline passed before the upstream answered",
        metadata={"attempts": str(attempts)},
    )


def internal(message: str = "internal error") -> GatewayError:
    return GatewayError(grpc.StatusCode.INTERNAL, "INTERNAL", message)
