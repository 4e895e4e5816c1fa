"""Authentication for every RPC, unary and streaming alike.

The bearer token in the `authorization` metadata is verified before the handler runs;
the Identity goes into the call state for the servicer's authorization. Refusals are
UNAUTHENTICATED with a generic message; the precise reason goes to the audit log only.
Health checks never need a token; reflection is open or closed by configuration;
further exemptions match full method names exactly.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from service.auth.identity import ANONYMOUS
from service.auth.verifier import AuthFailure, TokenVerifier
from service.callstate import call_state
from service.errors import GatewayError, to_rpc_status
from service.interceptors.wrapping import Context, WrappingInterceptor

_UNAUTHENTICATED = GatewayError(
    grpc.StatusCode.UNAUTHENTICATED,
    "INVALID_CREDENTIALS",
    "missing or invalid credentials: send 'authorization: Bearer <token>'",
)
_REFLECTION_SERVICES = (reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")


class AuthInterceptor(WrappingInterceptor):
    def __init__(
        self, verifier: TokenVerifier, exempt_methods: tuple[str, ...], reflection_open: bool
    ) -> None:
        self._verifier = verifier
        self._exempt = frozenset(exempt_methods)
        self._health_prefix = f"/{health.SERVICE_NAME}/"
        self._open_prefixes = (
            tuple(f"/{name}/" for name in _REFLECTION_SERVICES) if reflection_open else ()
        )

    def applies(self, method: str) -> bool:
        return not method.startswith(self._health_prefix)

    async def _authenticate(self, method: str, context: Context) -> None:
        state = call_state()
        metadata = tuple(context.invocation_metadata() or ())
        optional = method in self._exempt or method.startswith(self._open_prefixes)
        if optional and not any(key.lower() == "authorization" for key, _ in metadata):
            # Exempt methods need no token; one that is sent is still checked below.
            if state is not None:
                state.identity = ANONYMOUS
            return
        try:
            identity = await self._verifier.verify(metadata)
        except AuthFailure as failure:
            if state is not None:
                state.denied_reason = failure.reason
            # Built per refusal: the status's trailers carry this call's request id.
            await context.abort_with_status(to_rpc_status(_UNAUTHENTICATED))
            raise AssertionError("abort_with_status always raises") from failure
        if state is not None:
            state.identity = identity

    async def enter(self, method: str, request: Any, context: Context) -> None:
        await self._authenticate(method, context)
