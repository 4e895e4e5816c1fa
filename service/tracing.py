"""OpenTelemetry traces: a server span per ProviderService call and a client span per
upstream attempt (the router's), exported over OTLP/HTTP.

The server span continues the caller's W3C `traceparent` and is current while the call
runs, so attempt spans are its children (coalesced calls' shared work included). It
ends with the call's audit record, which holds the final status, model, provider,
attempts, tokens and cost: the trace says what the audit log says. Health checks and
reflection are not traced (probes would drown the calls). Spans never carry prompts,
completions, tokens or keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmgateway.config.v1 import config_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.callstate import CallState, call_state
from service.config import seconds_or
from service.interceptors.wrapping import Context, WrappingInterceptor

INSTRUMENTATION = "llm-gateway"
_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer_provider(config: config_pb2.TracingConfig) -> TracerProvider | None:
    if not config.otlp_endpoint:
        return None
    ratio = config.sample_ratio if config.HasField("sample_ratio") else 1.0
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name or "llm-gateway"}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint.rstrip("/") + "/v1/traces")
    delay_ms = seconds_or(config, "export_delay", 5.0) * 1000
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    return provider


def tracer_of(provider: TracerProvider | None) -> trace.Tracer:
    return provider.get_tracer(INSTRUMENTATION) if provider else trace.NoOpTracer()


class TracingInterceptor(WrappingInterceptor):
    """Starts each call's server span; `end_call_span` ends it with the call's record."""

    def __init__(self, tracer: trace.Tracer, service_prefix: str) -> None:
        self._tracer = tracer
        self._prefix = service_prefix

    def applies(self, method: str) -> bool:
        return method.startswith(self._prefix)

    def _start(self, method: str, context: Context) -> object:
        carrier = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in ("traceparent", "tracestate") and isinstance(value, str)
        }
        service, _, name = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method.lstrip("/"),
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        state = call_state()
        if state is not None:
            state.span = span
        else:  # no audit record will end it: nothing to trace
            span.end()
        attached = trace.set_span_in_context(span)
        return otel_context.attach(attached), attached

    async def enter(self, method: str, request: Any, context: Context) -> object:
        return self._start(method, context)

    def leave(self, entered: Any) -> None:
        token, attached = entered
        # A stream grpc abandoned is closed later from another context: nothing of ours
        # is attached there, and detaching would only log an error.
        if otel_context.get_current() is attached:
            otel_context.detach(token)


def end_call_span(record: Mapping[str, Any], state: CallState) -> None:
    """Ends the call's server span with what its audit record says."""
    span = state.span
    if span is None:
        return
    state.span = None
    attributes: dict[str, Any] = {
        "rpc.grpc.status_code": record["status"],
        "llm_gateway.request_id": record["request_id"],
        "llm_gateway.attempts": record["attempts"],
        "llm_gateway.fallback_used": record["fallback_used"],
        "llm_gateway.cache_hit": record["cache_hit"],
    }
    optional = {
        "gen_ai.request.model": record["model"],
        "gen_ai.response.model": record["upstream_model"],
        "gen_ai.provider.name": record["provider"],
        "gen_ai.usage.input_tokens": record["input_tokens"],
        "gen_ai.usage.output_tokens": record["output_tokens"],
        "llm_gateway.cost_usd": record["cost_usd"],
        "llm_gateway.tenant": record["tenant"],
        "error.type": record["reason"],
    }
    attributes.update({key: value for key, value in optional.items() if value})
    span.set_attributes(attributes)
    if record["status"] != "OK":
        span.set_status(Status(StatusCode.ERROR, record["status"]))
    span.end()
