"""PLACEHOLDER: the real audit interceptor replaces this file."""

from __future__ import annotations

from service.audit.sink import AuditSink
from service.interceptors.wrapping import WrappingInterceptor


class AuditInterceptor(WrappingInterceptor):
    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink
