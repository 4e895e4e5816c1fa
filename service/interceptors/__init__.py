"""Server interceptors: they see every RPC, unary and streaming alike.

The chain, outermost first, is built by `build_interceptors`: audit (sees every RPC,
refused ones included), tracing (when configured), load shedding, authentication, then
the request-decoding guard.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from llmgateway.config.v1 import config_pb2
from opentelemetry import trace

from service.audit.sink import AuditSink
from service.auth.verifier import TokenVerifier
from service.config import seconds_or
from service.interceptors.admission import AdmissionInterceptor
from service.interceptors.audit import AuditInterceptor, RecordObserver
from service.interceptors.auth import AuthInterceptor
from service.interceptors.decode import DecodeGuardInterceptor, receive_limit

PROVIDER_SERVICE_PREFIX = "/llmgateway.v1.ProviderService/"


def build_interceptors(
    config: config_pb2.GatewayConfig,
    audit: AuditSink,
    verifier: TokenVerifier | None,
    observers: Sequence[RecordObserver] = (),
    tracer: trace.Tracer | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    chain: list[grpc.aio.ServerInterceptor] = [AuditInterceptor(audit, observers)]
    if tracer is not None:
        from service.tracing import TracingInterceptor

        chain.append(TracingInterceptor(tracer, PROVIDER_SERVICE_PREFIX))
    if config.server.max_in_flight:
        chain.append(
            AdmissionInterceptor(
                PROVIDER_SERVICE_PREFIX,
                config.server.max_in_flight,
                seconds_or(config.server, "shed_retry_after", 1.0),
            )
        )
    if verifier is not None:
        auth = config.auth
        chain.append(
            AuthInterceptor(
                verifier,
                tuple(auth.exempt_methods),
                auth.reflection_open if auth.HasField("reflection_open") else True,
            )
        )
    chain.append(DecodeGuardInterceptor(receive_limit(config.server)))
    return chain
