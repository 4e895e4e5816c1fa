"""The base of the wrapping interceptors: a method's handler is wrapped once, and an
interceptor with only enter/leave hooks runs them around unary calls and streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc

from service.interceptors.wrapping import Context, WrappingInterceptor


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class _Hooks(WrappingInterceptor):
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def enter(self, method: str, request: Any, context: Context) -> str:
        self.seen.append(f"enter {method}")
        return method

    def leave(self, entered: Any) -> None:
        self.seen.append(f"leave {entered}")


async def _unary(request: str, context: Any) -> str:
    return request.upper()


async def _stream(request: str, context: Any) -> AsyncIterator[str]:
    for letter in request:
        yield letter


async def test_a_method_handler_is_wrapped_once_and_anew_when_it_changes() -> None:
    interceptor = _Hooks()
    handler = grpc.unary_unary_rpc_method_handler(_unary)

    async def continuation(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return handler

    details: Any = _Details("/s/M")
    first = await interceptor.intercept_service(continuation, details)
    assert await interceptor.intercept_service(continuation, details) is first
    handler = grpc.unary_unary_rpc_method_handler(_unary)
    assert await interceptor.intercept_service(continuation, details) is not first


async def test_enter_and_leave_run_around_unary_calls_and_streams() -> None:
    interceptor = _Hooks()
    handlers = {
        "/s/U": grpc.unary_unary_rpc_method_handler(_unary),
        "/s/S": grpc.unary_stream_rpc_method_handler(_stream),
    }

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return handlers[details.method]

    unary_call: Any = _Details("/s/U")
    stream_call: Any = _Details("/s/S")
    unary: Any = await interceptor.intercept_service(continuation, unary_call)
    assert await unary.unary_unary("ab", None) == "AB"
    stream: Any = await interceptor.intercept_service(continuation, stream_call)
    assert [item async for item in stream.unary_stream("ab", None)] == ["a", "b"]
    assert interceptor.seen == ["enter /s/U", "leave /s/U", "enter /s/S", "leave /s/S"]
