"""Load shedding: a cap on ProviderService calls in flight.

Calls over the cap are refused at once with RESOURCE_EXHAUSTED and RetryInfo, so that
the admitted ones keep their latency. Health checks and reflection are never shed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from service.errors import GatewayError, QuotaViolation, to_rpc_status


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service_prefix: str, max_in_flight: int, retry_after: float) -> None:
        self._prefix = service_prefix
        self._limit = max_in_flight
        self._retry_after = retry_after
        self.in_flight = 0
        self.shed = 0

    def _refusal(self) -> grpc.Status:
        self.shed += 1
        return to_rpc_status(
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

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        if handler.response_streaming:
            stream = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

            async def admitted_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if self.in_flight >= self._limit:
                    await context.abort_with_status(self._refusal())
                self.in_flight += 1
                try:
                    async for item in stream(request, context):
                        yield item
                finally:
                    self.in_flight -= 1

            return grpc.unary_stream_rpc_method_handler(
                admitted_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        unary = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.in_flight >= self._limit:
                await context.abort_with_status(self._refusal())
            self.in_flight += 1
            try:
                return await unary(request, context)
            finally:
                self.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
