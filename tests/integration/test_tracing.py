"""Traces through a real OTLP/HTTP collector on loopback: a server span per call that
continues the caller's traceparent, a client span per upstream attempt as its child,
statuses and attributes from the call's outcome, and nothing of the prompt."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from tests.fakes.otlp_collector import OtlpCollector
from tests.support import chat_request, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 3, initial_backoff: 0.01s, max_backoff: 0.02s}}}}
tracing: {{otlp_endpoint: "{collector}", export_delay: 0.05s, service_name: gw-test}}
providers:
  - {{name: flaky, mock: {{faults_from_metadata: true}}}}
models:
  - {{alias: m, provider: flaky, upstream_model: mock-1, pricing: {{input_per_million: 1, output_per_million: 1}}}}
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SECRET_PROMPT = "PROMPT-MARKER-traces-51c2"


async def test_calls_and_attempts_become_spans_of_the_callers_trace() -> None:
    async with OtlpCollector() as collector:
        async with running_gateway(CONFIG.format(collector=collector.url)) as gateway:
            traceparent = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
            flaky = (("x-mock-fail-status", "503"), ("x-mock-first-attempts", "1"))
            reply = await gateway.stub.Chat(
                chat_request(SECRET_PROMPT, model="m"), metadata=traceparent + flaky, timeout=5
            )
            assert reply.route.attempts == 2
            with pytest.raises(grpc.aio.AioRpcError):
                await gateway.stub.Chat(chat_request("x", model="nope"), timeout=5)
        # Stopping the gateway sends what was still batched.
        traced = [s for s in collector.spans if s.trace_id == TRACE_ID]
        server = next(s for s in traced if s.kind == ProtoSpan.SPAN_KIND_SERVER)
        assert server.name == "llmgateway.v1.ProviderService/Chat"
        assert server.parent_span_id == PARENT_ID, "the caller's trace continues"
        assert server.resource["service.name"] == "gw-test"
        assert server.attributes["rpc.grpc.status_code"] == "OK"
        assert server.attributes["gen_ai.request.model"] == "m"
        assert server.attributes["gen_ai.provider.name"] == "flaky"
        assert server.attributes["llm_gateway.attempts"] == 2
        assert server.attributes["gen_ai.usage.input_tokens"] == reply.usage.input_tokens
        assert server.status_code != ProtoStatus.STATUS_CODE_ERROR
        attempts = sorted(
            (s for s in traced if s.kind == ProtoSpan.SPAN_KIND_CLIENT),
            key=lambda s: s.attributes["llm_gateway.attempt"],
        )
        assert [s.name for s in attempts] == ["chat mock-1", "chat mock-1"]
        assert all(s.parent_span_id == server.span_id for s in attempts)
        assert attempts[0].status_code == ProtoStatus.STATUS_CODE_ERROR
        assert attempts[0].attributes["error.type"] == "UPSTREAM_UNAVAILABLE"
        assert attempts[0].attributes["http.response.status_code"] == 503
        assert attempts[1].status_code != ProtoStatus.STATUS_CODE_ERROR
        # A call without a traceparent starts its own trace; its failure is the status.
        failed = next(
            s
            for s in collector.spans
            if s.kind == ProtoSpan.SPAN_KIND_SERVER and s.trace_id != TRACE_ID
        )
        assert failed.parent_span_id == ""
        assert failed.status_code == ProtoStatus.STATUS_CODE_ERROR
        assert failed.attributes["rpc.grpc.status_code"] == "NOT_FOUND"
        assert failed.attributes["error.type"] == "MODEL_NOT_FOUND"
        everything = repr([(s.name, s.attributes, s.resource) for s in collector.spans])
        assert SECRET_PROMPT not in everything


async def test_health_checks_are_not_traced_and_streams_are() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with OtlpCollector() as collector:
        async with running_gateway(CONFIG.format(collector=collector.url)) as gateway:
            await health_pb2_grpc.HealthStub(gateway.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            chunks = [c async for c in gateway.stub.StreamChat(chat_request("a b", model="m"))]
            assert chunks[-1].usage.total_tokens
        servers = [s for s in collector.spans if s.kind == ProtoSpan.SPAN_KIND_SERVER]
        assert [s.name for s in servers] == ["llmgateway.v1.ProviderService/StreamChat"]
        assert servers[0].attributes["gen_ai.usage.output_tokens"] == chunks[-1].usage.output_tokens


@pytest.mark.parametrize(
    ("tracing", "path", "problem"),
    [
        ("{otlp_endpoint: 'collector:4318'}", "tracing.otlp_endpoint", "http(s) URL"),
        ("{otlp_endpoint: 'http://c:4318', sample_ratio: 1.5}", "tracing.sample_ratio", "0 to 1"),
        ("{otlp_endpoint: 'http://c:4318', sample_ratio: -0.1}", "tracing.sample_ratio", "0 to 1"),
        ("{otlp_endpoint: 'http://c:4318', export_delay: 0s}", "tracing.export_delay", "positive"),
    ],
)
def test_tracing_settings_are_validated(tracing: str, path: str, problem: str) -> None:
    from service.config import ConfigError, parse_config

    text = (
        f"auth: {{disabled: true}}\ntracing: {tracing}\n"
        "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert (caught.value.path, problem in caught.value.problem) == (path, True)
