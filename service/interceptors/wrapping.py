"""A base for interceptors that wrap what a handler does, unary and streaming alike.

grpc.aio's `intercept_service` sees only the method and metadata. To act on the call
itself (its context, its request, its responses, its outcome) an interceptor rebuilds
the handler around the original behaviour, keeping the (de)serializers and — crucially
for streaming methods — the handler's kind, so that a rejection is a proper status.
Subclasses override `around_unary` / `around_stream` (and optionally `applies` and
`wrap_deserializer`); the wrapped code runs in the RPC's own task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any] | None


async def _as_stream(produced: Any) -> AsyncIterator[Any]:
    if hasattr(produced, "__aiter__"):
        async for item in produced:
            yield item
    else:  # a handler that writes with context.write() (the health Watch)
        await produced


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    def applies(self, method: str) -> bool:
        return True

    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        return deserializer

    async def around_unary(
        self, method: str, request: Any, context: Context, proceed: Callable[[], Awaitable[Any]]
    ) -> Any:
        return await proceed()

    def around_stream(
        self,
        method: str,
        request: Any,
        context: Context,
        proceed: Callable[[], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        return proceed()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies(method):
            return handler
        deserializer = self.wrap_deserializer(handler.request_deserializer)
        if handler.request_streaming:
            return self._wrap_request_streaming(method, handler, deserializer)
        if handler.response_streaming:
            # The typing stubs describe sync handlers; these are grpc.aio ones.
            inner_stream = cast(Callable[..., Any], handler.unary_stream)

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                def proceed() -> AsyncIterator[Any]:
                    return _as_stream(inner_stream(request, context))

                async for item in self.around_stream(method, request, context, proceed):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_unary = cast(Callable[..., Awaitable[Any]], handler.unary_unary)

        async def unary(request: Any, context: Context) -> Any:
            return await self.around_unary(
                method, request, context, lambda: inner_unary(request, context)
            )

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_request_streaming(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], deserializer: Deserializer
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Client- and bidirectional-streaming methods (server reflection is one): the
        request passed to the hooks is the iterator of requests."""
        if handler.response_streaming:
            inner_bidi = cast(Callable[..., Any], handler.stream_stream)

            async def bidi(requests: Any, context: Context) -> AsyncIterator[Any]:
                def proceed() -> AsyncIterator[Any]:
                    return _as_stream(inner_bidi(requests, context))

                async for item in self.around_stream(method, requests, context, proceed):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                bidi,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_client = cast(Callable[..., Awaitable[Any]], handler.stream_unary)

        async def client_stream(requests: Any, context: Context) -> Any:
            return await self.around_unary(
                method, requests, context, lambda: inner_client(requests, context)
            )

        return grpc.stream_unary_rpc_method_handler(
            client_stream,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
