"""PLACEHOLDER: the real asynchronous, bounded sink replaces this file."""

from __future__ import annotations

from typing import Any

from llmgateway.config.v1 import config_pb2


class AuditSink:
    def __init__(self, config: config_pb2.AuditConfig) -> None:
        self.config = config
        self.written = 0
        self.dropped = 0

    @classmethod
    def from_config(cls, config: config_pb2.AuditConfig) -> AuditSink:
        return cls(config)

    async def start(self) -> None:
        return None

    def submit(self, record: dict[str, Any]) -> None:
        self.written += 1

    async def close(self) -> None:
        return None
