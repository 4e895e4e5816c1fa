"""Load shedding: a cap on ProviderService calls in flight.

Calls over the cap are refused at once with RESOURCE_EXHAUSTED and RetryInfo, so that
the admitted ones keep their latency. Health checks and reflection are never shed.
"""

from __future__ import annotations

from typing import Any

import grpc

from service.errors import GatewayError, QuotaViolation, to_rpc_status
from service.interceptors.wrapping import Context, WrappingInterceptor


class AdmissionInterceptor(WrappingInterceptor):
    def __init__(self, service_prefix: str, max_in_flight: int, retry_after: float) -> None:
        self._prefix = service_prefix
        self._limit = max_in_flight
        self._retry_after = retry_after
        self.in_flight = 0
        self.shed = 0

    def applies(self, method: str) -> bool:
        return method.startswith(self._prefix)

    async def _admit(self, context: Context) -> None:
        if self.in_flight < self._limit:
            self.in_flight += 1
            return
        self.shed += 1
        await context.abort_with_status(
            to_rpc_status(
                GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "OVERLOADED",
                    "the gateway is at its limit of calls in flight; retry shortly",
                    metadata={"maxInFlight": str(self._limit)},
                    retry_after=self._retry_after,
                    quota_violations=[
                        QuotaViolation("gateway", f"at most {self._limit} calls in flight")
                    ],
                )
            )
        )

    async def enter(self, method: str, request: Any, context: Context) -> None:
        await self._admit(context)

    def leave(self, entered: Any) -> None:
        self.in_flight -= 1
