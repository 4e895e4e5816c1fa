"""Checks the `server` section (port, durations, message sizes, load shedding, TLS)
and the `logging` section: how the process serves and logs. Used by service/server.py
and service/logs.py; called by the loader in service/config.py.
"""

from __future__ import annotations

from pathlib import Path

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or

_LOG_LEVELS = ("debug", "info", "warning", "error")


def check_server(server: config_pb2.ServerConfig) -> None:
    """Raises ConfigError at the first problem in the port, durations or message sizes."""
    if server.HasField("port") and server.port > 65535:
        raise ConfigError("server.port", "must be at most 65535")
    for name in ("shutdown_grace", "max_call_duration"):
        if seconds_or(server, name, 1.0) <= 0:
            raise ConfigError(f"server.{name}", "must be positive")
    sizes = {
        "max_receive_message_bytes": server.HasField("max_receive_message_bytes"),
        "max_send_message_bytes": server.HasField("max_send_message_bytes"),
    }
    for name, present in sizes.items():
        if present and getattr(server, name) < 1024:
            raise ConfigError(f"server.{name}", "must be at least 1024")


def check_logging(logs: config_pb2.LoggingConfig) -> None:
    """Raises ConfigError for an unknown `logging.level`."""
    level = logs.level
    if level and level not in _LOG_LEVELS:
        raise ConfigError("logging.level", f"must be one of {', '.join(_LOG_LEVELS)}")


def check_shedding(server: config_pb2.ServerConfig) -> None:
    """Raises ConfigError when load shedding is on without a positive retry hint."""
    if server.max_in_flight and seconds_or(server, "shed_retry_after", 1.0) <= 0:
        raise ConfigError("server.shed_retry_after", "must be positive")


def check_tls(tls: config_pb2.TlsConfig) -> None:
    """Raises ConfigError for a missing or unreadable TLS file (TLS is off when none is set)."""
    if not (tls.cert_file or tls.key_file or tls.client_ca_file):
        return
    for name in ("cert_file", "key_file", "client_ca_file"):
        value = getattr(tls, name)
        if name != "client_ca_file" and not value:
            raise ConfigError(f"server.tls.{name}", "is required for TLS")
        if value and not Path(value).is_file():
            raise ConfigError(f"server.tls.{name}", f"no readable file at {value}")
