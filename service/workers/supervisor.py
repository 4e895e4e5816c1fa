"""The supervisor of `server.workers` processes sharing one port (SO_REUSEPORT).

It binds the port first (so port 0 works and no other program can take it while a
worker is replaced), writes the validated config where the workers read it, starts the
workers and waits until every one listens, then announces the port. A worker that dies
unexpectedly is started again, at most MAX_RESTARTS times per RESTART_WINDOW for each
worker index; past that the supervisor stops the others and exits non-zero. SIGTERM
and SIGINT are forwarded to every worker, which drains as a single process does; the
supervisor exits when they have, 0 when every one exited 0. It serves the metrics
endpoint, asking each worker for its series over the worker's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
from llmgateway.config.v1 import config_pb2
from prometheus_client import CollectorRegistry

from service.metrics.endpoint import MetricsEndpoint
from service.server import DEFAULT_METRICS_HOST, DEFAULT_PORT, announce
from service.workers.collectors import ReplicaInfoCollector, WorkersCollector
from service.workers.peers import PEER_TIMEOUT, fetch_metrics, socket_path
from service.workers.role import replica_id_of, worker_count, write_config

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
EXIT_WORKERS_FAILED = 1


class RestartBudget:
    """At most `limit` restarts in any `window` seconds."""

    def __init__(self, limit: int = MAX_RESTARTS, window: float = RESTART_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._recent: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """True, and counted, when one more restart at `now` fits in the budget."""
        while self._recent and now - self._recent[0] >= self._window:
            self._recent.popleft()
        if len(self._recent) >= self._limit:
            return False
        self._recent.append(now)
        return True


@dataclass
class _Slot:
    """One worker index and the process currently holding it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    budget: RestartBudget = field(default_factory=RestartBudget)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the port with SO_REUSEPORT and never listening: the workers join
    it, and while the supervisor holds it no other user's program can take the port. A
    fixed port already in use (by anything) is refused first, with OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if port:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)  # without SO_REUSEPORT: fails when any socket holds it
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    def __init__(self, config: config_pb2.GatewayConfig) -> None:
        self.config = config
        self.count = worker_count(config.server)
        self.slots = [_Slot(index) for index in range(self.count)]
        self.run_dir = ""
        self.port = 0
        self._stopping = False
        self._signalled = False
        self._changed = asyncio.Event()
        self._channels: list[grpc.Channel] = []

    # --- workers -------------------------------------------------------------------------

    async def _start(self, slot: _Slot) -> bool:
        """Starts the worker of `slot`; True once it listens, False when it exited first."""
        read_end, write_end = os.pipe()
        try:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.workers.worker",
                f"--worker={slot.index}",
                f"--workers={self.count}",
                f"--port={self.port}",
                f"--run-dir={self.run_dir}",
                f"--ready-fd={write_end}",
                pass_fds=(write_end,),
                env={**os.environ, "LLM_GATEWAY_SUPERVISOR_PID": str(os.getpid())},
            )
        finally:
            os.close(write_end)
        try:
            # One line once it listens; end of file when it exits before that.
            line = await asyncio.to_thread(os.read, read_end, 64)
        finally:
            os.close(read_end)
        return bool(line)

    async def _watch(self, slot: _Slot) -> None:
        """Waits for the worker of `slot` to exit and replaces it unless stopping."""
        while True:
            process = slot.process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                break
            fields = {"worker": slot.index, "pid": process.pid, "exit_code": code}
            if not slot.budget.allow(time.monotonic()):
                log.error("worker keeps dying: stopping the server", extra={"fields": fields})
                break
            slot.restarts += 1
            log.warning(
                "worker died: starting it again",
                extra={"fields": {**fields, "restarts": slot.restarts}},
            )
            if not await self._start(slot):
                if not self._stopping:
                    log.error("replacement worker did not start", extra={"fields": fields})
                break
        self._changed.set()

    def _signal_workers(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def _on_signal(self, signum: int) -> None:
        log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
        self._stopping = self._signalled = True
        self._signal_workers(signal.SIGTERM)
        self._changed.set()

    # --- metrics -------------------------------------------------------------------------

    def _fetch_metrics(self, index: int) -> str | None:
        try:
            return fetch_metrics(self._channels, index, PEER_TIMEOUT * 2).decode()
        except grpc.RpcError:
            return None

    def _restarts(self) -> dict[int, int]:
        return {slot.index: slot.restarts for slot in self.slots}

    def _start_metrics(self) -> MetricsEndpoint | None:
        metrics = self.config.metrics
        if not metrics.HasField("port"):
            return None
        self._channels = [
            grpc.insecure_channel(f"unix:{socket_path(self.run_dir, i)}") for i in range(self.count)
        ]
        registry = CollectorRegistry(auto_describe=True)
        registry.register(WorkersCollector(self.count, self._fetch_metrics, self._restarts))
        replica = replica_id_of(self.config.server, os.environ)
        registry.register(ReplicaInfoCollector(replica, self.count))
        host = metrics.host or DEFAULT_METRICS_HOST
        endpoint = MetricsEndpoint(registry, host, metrics.port)
        try:
            port = endpoint.start()
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{metrics.port}: {exc}") from exc
        log.info("metrics listening", extra={"fields": {"address": f"{host}:{port}"}})
        return endpoint

    # --- the whole run -------------------------------------------------------------------

    async def run(self) -> int:
        server = self.config.server
        host = server.host or "0.0.0.0"
        reserved = reserve_port(host, server.port if server.HasField("port") else DEFAULT_PORT)
        self.port = int(reserved.getsockname()[1])
        self.run_dir = tempfile.mkdtemp(prefix="llm-gateway-")
        endpoint: MetricsEndpoint | None = None
        try:
            write_config(self.run_dir, self.config)
            endpoint = self._start_metrics()
            return await self._serve()
        finally:
            if endpoint is not None:
                await asyncio.to_thread(endpoint.stop)
            for channel in self._channels:
                channel.close()
            reserved.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        started = await asyncio.gather(*(self._start(slot) for slot in self.slots))
        if not all(started) or self._stopping:
            if not self._stopping:
                log.error("a worker did not start: stopping the others")
            self._stopping = True
            self._signal_workers(signal.SIGTERM)
            codes = [await s.process.wait() for s in self.slots if s.process is not None]
            return next((code for code in codes if code), EXIT_WORKERS_FAILED)
        announce(self.config, self.port, self.count)
        watchers = [asyncio.create_task(self._watch(slot)) for slot in self.slots]
        await self._changed.wait()
        if not self._stopping:  # a worker could not be kept running
            self._stopping = True
            self._signal_workers(signal.SIGTERM)
        await asyncio.gather(*watchers)
        codes = [await slot.process.wait() for slot in self.slots if slot.process is not None]
        failed = any(code != 0 for code in codes) or not self._signalled
        log.info("stopped", extra={"fields": {"exit_codes": codes}})
        return EXIT_WORKERS_FAILED if failed else 0
