"""Guards request decoding: undecodable bytes get INVALID_ARGUMENT, oversized messages
RESOURCE_EXHAUSTED, both with details and both through the audit interceptor.

Left alone, grpc.aio answers a request its deserializer cannot parse with UNKNOWN and
the exception's text, and a message over the transport's size limit with a bare
RESOURCE_EXHAUSTED before any interceptor runs (so the call leaves no audit record).
This interceptor gives every method a deserializer that cannot raise and that refuses
messages over `server.max_receive_message_bytes` before parsing them; the transport's
own limit is a hard ceiling above that (`transport_receive_limit`). A behaviour then
rejects what did not decode, for unary requests and for each message of a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import message
from llmgateway.config.v1 import config_pb2

from service.errors import FieldViolation, GatewayError, to_rpc_status
from service.interceptors.wrapping import Context, Deserializer, WrappingInterceptor

DEFAULT_MESSAGE_BYTES = 16 * 1024 * 1024
# The transport refuses (unaudited) only messages this many times over the limit.
TRANSPORT_CEILING_FACTOR = 4
_MAX_GRPC_LENGTH = 2**31 - 1


def receive_limit(server: config_pb2.ServerConfig) -> int:
    """The largest request message the gateway accepts (server.max_receive_message_bytes)."""
    if server.HasField("max_receive_message_bytes"):
        return server.max_receive_message_bytes
    return DEFAULT_MESSAGE_BYTES


def transport_receive_limit(limit: int) -> int:
    """gRPC's own receive limit: a ceiling above `limit`, so that messages between the two
    reach the gateway, which refuses them with a reason and an audit record."""
    return min(limit * TRANSPORT_CEILING_FACTOR, _MAX_GRPC_LENGTH)


class _Undecodable:
    __slots__ = ()


class _TooLarge:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


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


def _too_large(method: str, size: int, limit: int) -> grpc.Status:
    return to_rpc_status(
        GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
            f"the request message is {size} bytes; this server accepts at most {limit}",
            metadata={"method": method, "limit": str(limit), "size": str(size)},
        )
    )


class DecodeGuardInterceptor(WrappingInterceptor):
    def __init__(self, max_message_bytes: int = DEFAULT_MESSAGE_BYTES) -> None:
        self._limit = max_message_bytes

    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        limit = self._limit

        def decode(raw: bytes) -> Any:
            if len(raw) > limit:
                return _TooLarge(len(raw))
            if deserializer is None:
                return raw
            try:
                return deserializer(raw)
            except (message.DecodeError, ValueError, RuntimeError):
                return _UNDECODABLE

        return decode

    async def _refuse(self, method: str, request: Any, context: Context) -> None:
        if request is _UNDECODABLE:
            await context.abort_with_status(_bad_request(method))
        if isinstance(request, _TooLarge):
            await context.abort_with_status(_too_large(method, request.size, self._limit))

    async def enter(self, method: str, request: Any, context: Context) -> None:
        await self._refuse(method, request, context)

    def wrap_requests(self, method: str, requests: Any, context: Context) -> Any:
        async def guarded() -> AsyncIterator[Any]:
            async for request in requests:
                await self._refuse(method, request, context)
                yield request

        return guarded()
