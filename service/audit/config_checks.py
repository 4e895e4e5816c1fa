"""Checks the `audit` section. Used by service/audit/sink.py; called by the loader in
service/config.py.
"""

from __future__ import annotations

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError


def check_audit(audit: config_pb2.AuditConfig) -> None:
    """Raises ConfigError when `audit.queue_size` is set below 1."""
    if audit.HasField("queue_size") and audit.queue_size < 1:
        raise ConfigError("audit.queue_size", "must be at least 1")
