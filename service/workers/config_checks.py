"""Checks `server.workers` and `server.replica_id` against the rest of the config: what
cannot be kept per worker process without changing its meaning is refused."""

from __future__ import annotations

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError

MAX_WORKERS = 64
MAX_REPLICA_ID = 253


def _has_limits(limits: config_pb2.LimitsConfig) -> bool:
    return (
        limits.HasField("subject")
        or limits.HasField("tenant")
        or bool(limits.subjects)
        or bool(limits.tenants)
        or bool(limits.issuers)
    )


def check_workers(config: config_pb2.GatewayConfig) -> None:
    """Raises ConfigError for a worker count out of range, or one that would multiply
    in-process limits or interleave the audit log on stdout."""
    server = config.server
    replica = server.replica_id
    if len(replica) > MAX_REPLICA_ID or not replica.isprintable():
        raise ConfigError(
            "server.replica_id", f"must be at most {MAX_REPLICA_ID} printable characters"
        )
    if not server.HasField("workers"):
        return
    workers = server.workers
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError("server.workers", f"must be between 1 and {MAX_WORKERS}")
    if workers == 1:
        return
    shared = config.limits.HasField("redis") or config.HasField("redis")
    if _has_limits(config.limits) and not shared:
        raise ConfigError(
            "server.workers",
            f"{workers} workers would each keep their own rate limits and budgets, allowing "
            f"{workers} times the configured limits: set redis (or limits.redis) to share them, "
            "or use one worker",
        )
    if config.audit.path == "-":
        raise ConfigError(
            "audit.path",
            "with server.workers above 1 each worker writes a file of its own; "
            '"-" (stdout) would interleave their records: name a file',
        )
