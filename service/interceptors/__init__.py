"""Server interceptors: they see every RPC, unary and streaming alike.

The chain, outermost first, is built by `build_interceptors`. Authentication and
audit slot in here in front of the request-decoding guard.
"""

from __future__ import annotations

import grpc

from service.interceptors.decode import DecodeGuardInterceptor


def build_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [DecodeGuardInterceptor()]
