"""Answers undecodable request bytes with INVALID_ARGUMENT and details.

Left alone, grpc.aio answers a request its deserializer cannot parse with UNKNOWN and
the exception's text. This interceptor gives every method a deserializer that cannot
raise, and a behaviour that rejects what did not decode.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message

from service.errors import FieldViolation, GatewayError, to_rpc_status
from service.interceptors.wrapping import Context, Deserializer, WrappingInterceptor


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


class DecodeGuardInterceptor(WrappingInterceptor):
    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        def decode(raw: bytes) -> Any:
            if deserializer is None:
                return raw
            try:
                return deserializer(raw)
            except (message.DecodeError, ValueError, RuntimeError):
                return _UNDECODABLE

        return decode

    async def enter(self, method: str, request: Any, context: Context) -> None:
        if request is _UNDECODABLE:
            await context.abort_with_status(_bad_request(method))
