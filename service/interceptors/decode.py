"""Answers undecodable request bytes with INVALID_ARGUMENT and details.

Left alone, grpc.aio answers a request its deserializer cannot parse with UNKNOWN and
the exception's text. This interceptor gives every method a deserializer that cannot
raise, and a behaviour that rejects what did not decode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf import message

from service.errors import FieldViolation, GatewayError, to_rpc_status


class _Undecodable:
    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _bad_request(method: str) -> grpc.Status:
    return to_rpc_status(
        GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            "the request is not a valid protobuf message for this method",
            metadata={"method": method},
            field_violations=[FieldViolation("request", "could not be decoded")],
        )
    )


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (message.DecodeError, ValueError, RuntimeError):
            return _UNDECODABLE

    return decode


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        deserializer = _lenient(handler.request_deserializer)
        if handler.response_streaming:
            # The typing stubs describe sync handlers; these are grpc.aio ones.
            stream_behavior = cast(Callable[..., Any], handler.unary_stream)

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if request is _UNDECODABLE:
                    await context.abort_with_status(_bad_request(method))
                produced = stream_behavior(request, context)
                if hasattr(produced, "__aiter__"):
                    async for item in produced:
                        yield item
                else:  # a handler that writes with context.write() (the health Watch)
                    await produced

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        unary_behavior = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is _UNDECODABLE:
                await context.abort_with_status(_bad_request(method))
            return await unary_behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
