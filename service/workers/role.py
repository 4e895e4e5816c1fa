"""What a worker process is told by its supervisor, and the config it serves with."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmgateway.config.v1 import config_pb2

CONFIG_FILE = "config.pb"


@dataclass(frozen=True)
class WorkerRole:
    """One worker of `count`, numbered from 0; its siblings' sockets are in `run_dir`."""

    index: int
    count: int
    run_dir: str


def worker_count(server: config_pb2.ServerConfig) -> int:
    return server.workers if server.HasField("workers") else 1


def replica_id_of(server: config_pb2.ServerConfig, environ: Mapping[str, str]) -> str:
    """server.replica_id, else $HOSTNAME (the pod name in Kubernetes), else the host name."""
    return server.replica_id or environ.get("HOSTNAME") or socket.gethostname()


def worker_audit_path(path: str, index: int) -> str:
    """The file one worker writes its own audit chain to: audit.jsonl -> audit.worker-0.jsonl."""
    original = Path(path)
    return str(original.with_name(f"{original.stem}.worker-{index}{original.suffix}"))


def worker_config(
    config: config_pb2.GatewayConfig, role: WorkerRole, port: int
) -> config_pb2.GatewayConfig:
    """The config a worker serves with: the supervisor's port, its own audit file, and no
    metrics endpoint of its own (the supervisor serves every worker's metrics)."""
    own = config_pb2.GatewayConfig()
    own.CopyFrom(config)
    own.server.port = port
    own.metrics.ClearField("port")
    if own.audit.path and own.audit.path != "-":
        own.audit.path = worker_audit_path(own.audit.path, role.index)
    return own


def write_config(run_dir: str, config: config_pb2.GatewayConfig) -> None:
    """The validated config, for the workers (a replaced worker serves the same one)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(config.SerializeToString())


def read_config(run_dir: str) -> config_pb2.GatewayConfig:
    with open(os.path.join(run_dir, CONFIG_FILE), "rb") as source:
        return config_pb2.GatewayConfig.FromString(source.read())
