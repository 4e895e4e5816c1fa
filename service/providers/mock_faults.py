"""Faults the mock provider simulates, from its config and from request metadata.

Pure. Metadata keys (only when the provider allows faults from metadata):
  x-mock-fail-status      upstream HTTP status to fail with (400..599)
  x-mock-retry-after      seconds, sent as the upstream's Retry-After hint
  x-mock-first-attempts   only attempts 1..N of the call fail (0: all)
  x-mock-after-chunks     streams fail or stall after this many chunks
  x-mock-stall            seconds to wait before answering (or before chunk N)
  x-mock-target           apply the x-mock-* faults only to this provider name
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or
from service.errors import FieldViolation, GatewayError, invalid_argument
from service.providers.upstream_errors import UpstreamFailure, from_upstream

PREFIX = "x-mock-"


@dataclass(frozen=True)
class Fault:
    http_status: int = 0
    retry_after: float | None = None
    first_attempts: int = 0
    after_chunks: int | None = None
    stall: float = 0.0

    def fails(self, attempt: int) -> bool:
        return self.http_status != 0 and (
            self.first_attempts == 0 or attempt <= self.first_attempts
        )

    def error(self, provider: str, model: str) -> GatewayError:
        return from_upstream(
            UpstreamFailure(
                provider=provider,
                model=model,
                http_status=self.http_status,
                upstream_type="mock_fault",
                retry_after=self.retry_after,
            )
        )


def fault_from_config(config: config_pb2.MockFault) -> Fault:
    return Fault(
        http_status=config.http_status,
        retry_after=seconds_or(config, "retry_after", 0.0) or None,
        first_attempts=config.first_attempts,
        after_chunks=config.after_chunks if config.HasField("after_chunks") else None,
        stall=seconds_or(config, "stall", 0.0),
    )


def _number(metadata: Mapping[str, str], key: str, low: float, high: float) -> float | None:
    raw = metadata.get(PREFIX + key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise invalid_argument(
            [
                FieldViolation(
                    f"metadata.{PREFIX}{key}", f"must be a number from {low:g} to {high:g}"
                )
            ]
        )
    return value


def apply_metadata(base: Fault, metadata: Mapping[str, str], provider: str) -> Fault:
    """The configured fault overridden by the x-mock-* metadata of one call."""
    target = metadata.get(PREFIX + "target")
    if target is not None and target != provider:
        return base
    status = _number(metadata, "fail-status", 400, 599)
    retry_after = _number(metadata, "retry-after", 0, 3600)
    first = _number(metadata, "first-attempts", 0, 1000)
    after = _number(metadata, "after-chunks", 0, 100000)
    stall = _number(metadata, "stall", 0, 3600)
    fault = base
    if status is not None:
        fault = replace(fault, http_status=int(status))
    if retry_after is not None:
        fault = replace(fault, retry_after=retry_after)
    if first is not None:
        fault = replace(fault, first_attempts=int(first))
    if after is not None:
        fault = replace(fault, after_chunks=int(after))
    if stall is not None:
        fault = replace(fault, stall=stall)
    return fault
