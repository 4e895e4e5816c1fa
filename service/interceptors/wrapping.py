"""A base for interceptors that wrap what a handler does, unary and streaming alike.

grpc.aio's `intercept_service` sees only the method and metadata. To act on the call
itself (its context, its request, its responses, its outcome) an interceptor rebuilds
the handler around the original behaviour, keeping the (de)serializers and — crucially
for streaming methods — the handler's kind, so that a rejection is a proper status.
Subclasses override `enter` / `leave` (what happens before and after a call), or
`around_unary` / `around_stream` to act on its outcome, and optionally `applies`,
`wrap_deserializer` and `wrap_requests`; the wrapped code runs in the RPC's own task.
"""

from __future__ import annotations

import inspect
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


# (request streaming, response streaming) -> the handler attribute that holds the behaviour
_KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    def applies(self, method: str) -> bool:
        return True

    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        return deserializer

    def wrap_requests(self, method: str, requests: Any, context: Context) -> Any:
        """For client- and bidirectional-streaming methods: the request iterator the
        behaviour reads (by default grpc's own)."""
        return requests

    async def enter(self, method: str, request: Any, context: Context) -> Any:
        """Runs before the call's behaviour (it may abort the call); what it returns is
        given to `leave`, which runs after the behaviour, however it ends."""
        return None

    def leave(self, entered: Any) -> None:
        return None

    async def around_unary(
        self, method: str, request: Any, context: Context, proceed: Callable[[], Awaitable[Any]]
    ) -> Any:
        entered = await self.enter(method, request, context)
        try:
            return await proceed()
        finally:
            self.leave(entered)

    async def around_stream(
        self,
        method: str,
        request: Any,
        context: Context,
        proceed: Callable[[], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        entered = await self.enter(method, request, context)
        try:
            async for item in proceed():
                yield item
        finally:
            self.leave(entered)

    def _overridden(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(WrappingInterceptor, name)

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
        # grpc asks for the handler on every call, and a method's handler is the same
        # object every time: it is wrapped once.
        wrapped = cast(
            "dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]]",
            self.__dict__.setdefault("_wrapped_handlers", {}),
        )
        known = wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        behaviour = self._wrap(method, handler)
        wrapped[method] = (handler, behaviour)
        return behaviour

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        # The typing stubs describe sync handlers; these are grpc.aio ones. For client-
        # and bidirectional-streaming methods (server reflection is one) the request the
        # hooks see is the iterator of requests.
        inner = cast(Callable[..., Any], getattr(handler, kind))
        streamed_requests = handler.request_streaming
        # A handler that is an async generator function (the servicer's, or another
        # interceptor's) is iterated as it is, without a generator of its own around it.
        generates = inspect.isasyncgenfunction(inner)

        def requests_of(request: Any, context: Context) -> Any:
            if streamed_requests:
                return self.wrap_requests(method, request, context)
            return request

        def responses(request: Any, context: Context) -> AsyncIterator[Any]:
            produced = inner(request, context)
            return cast(AsyncIterator[Any], produced) if generates else _as_stream(produced)

        if self._overridden("around_stream"):

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                request = requests_of(request, context)
                async for item in self.around_stream(
                    method, request, context, lambda: responses(request, context)
                ):
                    yield item

        else:  # enter and leave only: one generator for this interceptor, not three

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                request = requests_of(request, context)
                entered = await self.enter(method, request, context)
                try:
                    async for item in responses(request, context):
                        yield item
                finally:
                    self.leave(entered)

        if self._overridden("around_unary"):

            async def unary(request: Any, context: Context) -> Any:
                request = requests_of(request, context)
                return await self.around_unary(
                    method, request, context, lambda: inner(request, context)
                )

        else:

            async def unary(request: Any, context: Context) -> Any:
                request = requests_of(request, context)
                entered = await self.enter(method, request, context)
                try:
                    return await inner(request, context)
                finally:
                    self.leave(entered)

        behaviour = streaming if handler.response_streaming else unary
        make_handler = getattr(grpc, f"{kind}_rpc_method_handler")
        return cast(
            "grpc.RpcMethodHandler[Any, Any]",
            make_handler(
                behaviour,
                request_deserializer=self.wrap_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            ),
        )
