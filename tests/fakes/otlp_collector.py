"""An OTLP/HTTP trace collector on loopback: it accepts ExportTraceServiceRequest
protobufs at /v1/traces, as a real collector does, and keeps the spans."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse, FakeUpstream


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    resource: dict[str, Any] = field(default_factory=dict)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpCollector(FakeUpstream):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.server = FakeHttpServer(self.handle)

    def handle(self, request: FakeRequest) -> FakeResponse:
        if request.method != "POST" or request.path != "/v1/traces":
            return FakeResponse.raw(b"not found", status=404)
        if request.headers.get("content-type") != "application/x-protobuf":
            return FakeResponse.raw(b"unsupported media type", status=415)
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            status_code=span.status.code,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            resource=resource,
                        )
                    )
        return FakeResponse.raw(
            ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )
