"""Checks the `tracing` section: the OTLP endpoint, sample ratio and export delay.
Used by service/tracing.py; called by the loader in service/config.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or


def check_tracing(tracing: config_pb2.TracingConfig) -> None:
    """Raises ConfigError at the first problem in `tracing`."""
    if tracing.otlp_endpoint and urlsplit(tracing.otlp_endpoint).scheme not in ("http", "https"):
        raise ConfigError("tracing.otlp_endpoint", "must be an http(s) URL")
    if tracing.HasField("sample_ratio") and not 0.0 <= tracing.sample_ratio <= 1.0:
        raise ConfigError("tracing.sample_ratio", "must be from 0 to 1")
    if tracing.HasField("export_delay") and seconds_or(tracing, "export_delay", 0.0) <= 0:
        raise ConfigError("tracing.export_delay", "must be positive")
