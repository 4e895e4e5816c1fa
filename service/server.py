"""Builds and runs the grpc.aio server: services, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import models_pb2, provider_service_pb2, provider_service_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from service.audit.sink import AuditSink
from service.auth.verifier import TokenVerifier
from service.config import ConfigError, seconds_or
from service.exposure import plaintext_credential_warnings
from service.health import HealthService
from service.interceptors import build_interceptors
from service.interceptors.admission import AdmissionInterceptor
from service.interceptors.decode import (
    DEFAULT_MESSAGE_BYTES,
    receive_limit,
    transport_receive_limit,
)
from service.limits import Limiter
from service.limits.redis_store import RedisLimitStore
from service.logs import LOG_GUARD, WINDOW, report_suppressed
from service.metrics.calls import CallMetrics
from service.metrics.endpoint import MetricsEndpoint
from service.metrics.logs import LogGuardCollector
from service.metrics.state import GatewaySnapshot, StateCollector, on_loop
from service.providers.registry import Registry
from service.reflection import enable_reflection
from service.routing.cache import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_ENTRY_BYTES,
    Cache,
    ResponseCache,
)
from service.routing.discovery import Discovery
from service.routing.headroom import Headroom
from service.routing.quotas import UpstreamQuotas
from service.routing.redis_cache import RedisResponseCache
from service.routing.resilience import Resilience
from service.routing.router import Router
from service.routing.shared_breakers import SharedBreakers
from service.routing.stats import StatsBook
from service.servicer import ProviderServicer
from service.shared_store.connection import SharedRedis, shared_store_config
from service.tracing import build_tracer_provider, end_call_span, tracer_of
from service.workers.collectors import PeerFailuresCollector, ReplicaInfoCollector
from service.workers.merge import whole_server
from service.workers.peers import PeerServer, Siblings, socket_path
from service.workers.role import WorkerRole, replica_id_of

log = logging.getLogger(__name__)

SERVICE_NAME = provider_service_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
DEFAULT_PORT = 50051
MAX_METADATA_BYTES = 96 * 1024
MAX_PENDING_CALLS = 100_000
# The metrics endpoint has no authentication: this host only, unless metrics.host says.
DEFAULT_METRICS_HOST = "127.0.0.1"


def _ms(holder: config_pb2.KeepaliveConfig, field: str, default: float) -> int:
    return round(seconds_or(holder, field, default) * 1000)


def server_options(
    server: config_pb2.ServerConfig, reuse_port: bool = False
) -> list[tuple[str, int]]:
    """gRPC channel arguments from the server configuration; `reuse_port` for a worker,
    which shares the port with its siblings."""
    keepalive = server.keepalive
    options = [
        # A ceiling only: the configured limit is enforced by the decode guard, which
        # refuses with a reason and leaves an audit record (gRPC's transport would not).
        ("grpc.max_receive_message_length", transport_receive_limit(receive_limit(server))),
        (
            "grpc.max_send_message_length",
            server.max_send_message_bytes
            if server.HasField("max_send_message_bytes")
            else DEFAULT_MESSAGE_BYTES,
        ),
        ("grpc.keepalive_time_ms", _ms(keepalive, "time", 60)),
        ("grpc.keepalive_timeout_ms", _ms(keepalive, "timeout", 20)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _ms(keepalive, "min_client_ping_interval", 10),
        ),
        ("grpc.keepalive_permit_without_calls", 1),
        # A second process on the same port must fail to start, not share it silently;
        # only the workers of one supervisor share it (service/workers/supervisor.py).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Room for bearer tokens up to auth.max_token_bytes (and then some), so that an
        # oversized token reaches authentication and gets a proper, audited refusal. The
        # soft and the hard limit are the same: between the two gRPC refuses a random
        # share of calls, and the same request must always get the same answer.
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        # Calls the transport has accepted and the event loop has not taken up yet. Over
        # gRPC's defaults (1,000, and a random share of them up to 3,000) they are
        # cancelled before any interceptor sees them: no audit record, no reason. A burst
        # of a few thousand calls (streams opened at once) gets there when the loop is
        # busy; max_in_flight is the way to shed load, with a proper, audited refusal.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]
    if keepalive.HasField("max_connection_age"):
        options.append(("grpc.max_connection_age_ms", _ms(keepalive, "max_connection_age", 0)))
        options.append(
            ("grpc.max_connection_age_grace_ms", _ms(keepalive, "max_connection_age_grace", 300))
        )
    return options


def response_cache(
    config: config_pb2.GatewayConfig, shared: SharedRedis | None = None
) -> Cache | None:
    """The cache, when some alias uses it: in the shared store when it says so."""
    if not any(model.HasField("cache") for model in config.models):
        return None
    cache = config.cache
    max_entries = cache.max_entries if cache.HasField("max_entries") else DEFAULT_MAX_ENTRIES
    max_bytes = cache.max_bytes if cache.HasField("max_bytes") else DEFAULT_MAX_BYTES
    max_entry_bytes = (
        cache.max_entry_bytes if cache.HasField("max_entry_bytes") else DEFAULT_MAX_ENTRY_BYTES
    )
    if cache.store == config_pb2.CACHE_STORE_REDIS and shared is not None:
        return RedisResponseCache(
            shared,
            max_entries=max_entries,
            max_bytes=max_bytes,
            max_entry_bytes=max_entry_bytes,
            shared_between_tenants=cache.shared_between_tenants,
            share_without_tenant=cache.share_without_tenant,
        )
    return ResponseCache(
        max_entries=max_entries,
        max_bytes=max_bytes,
        max_entry_bytes=max_entry_bytes,
        shared_between_tenants=cache.shared_between_tenants,
        share_without_tenant=cache.share_without_tenant,
    )


def served_methods() -> list[str]:
    """Full names of the methods of every service the server registers."""
    services = [
        provider_service_pb2.DESCRIPTOR.services_by_name["ProviderService"],
        *health_pb2.DESCRIPTOR.services_by_name.values(),
        *reflection_pb2.DESCRIPTOR.services_by_name.values(),
    ]
    return [f"/{svc.full_name}/{method.name}" for svc in services for method in svc.methods]


class GatewayServer:
    """The gateway's gRPC server. `start()` binds and returns the port."""

    def __init__(
        self,
        config: config_pb2.GatewayConfig,
        interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
        environ: Mapping[str, str] | None = None,
        role: WorkerRole | None = None,
        as_written: config_pb2.GatewayConfig | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.registry = Registry.from_config(config, environ)
        if as_written is not None:
            self.registry.note_key_missing(as_written)
        self.stats = StatsBook(
            {name: p.kind for name, p in self.registry.providers.items()},
            missing_keys=self.registry.key_missing,
            missing_key_deployments=self.registry.left_out_keys(),
        )
        # time.monotonic is the event loop's clock, so deadlines and breakers agree.
        self.resilience = Resilience(config, time.monotonic)
        self.tracer_provider = build_tracer_provider(config.tracing)
        env = os.environ if environ is None else environ
        store_config = shared_store_config(config)
        self.shared_store = (
            SharedRedis.from_config(store_config, env) if store_config is not None else None
        )
        self._store_pause = seconds_or(store_config, "pause", 1.0) if store_config else 1.0
        self.replica_id = replica_id_of(config.server, env)
        self.limit_store = (
            RedisLimitStore(self.shared_store) if self.shared_store is not None else None
        )
        self.limiter = Limiter.from_config(
            config.limits, store=self.limit_store, store_config=store_config
        )
        self.router = Router(
            self.registry,
            self.stats,
            self.resilience,
            cache=response_cache(config, self.shared_store),
            tracer=tracer_of(self.tracer_provider),
            # The providers' rate limits share the caller limits' store and failure count.
            quotas=UpstreamQuotas(
                self.limit_store,
                self.limiter.failures,
                deployments=self.registry.every_deployment(),
            ),
        )
        self.shared_breakers: SharedBreakers | None = None
        if self.shared_store is not None:
            shared_breakers = SharedBreakers(self.shared_store, self.resilience.breaker)
            shared_breakers.watch(
                member.deployment
                for deployment in self.registry.deployments()
                for member in self.registry.members(deployment)
            )
            if any(True for _ in shared_breakers.watched):
                self.shared_breakers = self.resilience.shared = shared_breakers
        self._background: list[asyncio.Task[None]] = []
        self.router.availability.missing_keys = frozenset(self.registry.key_missing)
        self.discovery = Discovery.from_config(config, self.registry.providers)
        self.router.discovery = self.discovery
        self.health = HealthService()
        self.audit = AuditSink.from_config(config.audit)
        self.verifier = None if config.auth.disabled else TokenVerifier(config.auth, env)
        server_config = config.server
        self._grace = seconds_or(server_config, "shutdown_grace", 10.0)
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self.call_metrics = CallMetrics(
            self.metrics_registry, served_methods(), (m.alias for m in config.models)
        )
        chain = (
            build_interceptors(
                config,
                self.audit,
                self.verifier,
                [self.call_metrics.observe, end_call_span],
                self.router.tracer if self.tracer_provider is not None else None,
            )
            if interceptors is None
            else list(interceptors)
        )
        self._admission = next((i for i in chain if isinstance(i, AdmissionInterceptor)), None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_registry.register(StateCollector(self._snapshot_from_any_thread))
        self.metrics_registry.register(LogGuardCollector(LOG_GUARD))
        self._peer: PeerServer | None = None
        self._siblings: Siblings | None = None
        if role is None:
            self.metrics_registry.register(ReplicaInfoCollector(self.replica_id, 1))
        else:
            self._peer = PeerServer(
                socket_path(role.run_dir, role.index), self._own_stats, self._metrics_text
            )
            self._siblings = Siblings(role.run_dir, role.index, role.count)
            self.metrics_registry.register(PeerFailuresCollector(self._peer_failures))
        self._server = grpc.aio.server(
            interceptors=chain, options=server_options(server_config, reuse_port=role is not None)
        )
        provider_service_pb2_grpc.add_ProviderServiceServicer_to_server(
            ProviderServicer.from_config(
                self.router, config, self.limiter, provider_stats=self.provider_stats
            ),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if not server_config.HasField("reflection") or server_config.reflection:
            enable_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
            )
        self.port = 0
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        host = self.config.server.host or "0.0.0.0"
        port = self.config.server.port if self.config.server.HasField("port") else DEFAULT_PORT
        return f"{host}:{port}"

    def _credentials(self) -> grpc.ServerCredentials | None:
        tls = self.config.server.tls
        if not tls.cert_file:
            return None
        try:
            key = Path(tls.key_file).read_bytes()
            chain = Path(tls.cert_file).read_bytes()
            client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
        except OSError as exc:
            raise ConfigError("server.tls", f"cannot read a certificate file: {exc}") from exc
        require = tls.require_client_cert if tls.HasField("require_client_cert") else True
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=client_ca,
            require_client_auth=bool(client_ca) and require,
        )

    def snapshot(self) -> GatewaySnapshot:
        """The state the metrics report; read on the event loop."""
        return GatewaySnapshot(
            providers=self.router.stats.snapshot("", self.resilience.breakers),
            audit=self.audit.stats(),
            limit_store_failures=self.limiter.failures.count,
            shared_store=(
                {**self.shared_store.guard.stats(), **self.limiter.pending.stats()}
                if self.shared_store is not None
                else None
            ),
            in_flight=self._admission.in_flight if self._admission else None,
            shed=self._admission.shed if self._admission else None,
            cache=self._cache_stats(),
        )

    def _local_stats(
        self, provider: str, headroom: Mapping[str, Headroom] | None = None
    ) -> list[models_pb2.ProviderStats]:
        return self.router.stats.snapshot(provider, self.resilience.breakers, headroom)

    async def _headroom(self, provider: str) -> dict[str, Headroom]:
        """Each rate-limited deployment's room, read from the quota store."""
        quotas = self.router.quotas
        return {
            d.key: await quotas.headroom(d)
            for d in quotas.watched()
            if not provider or d.provider == provider
        }

    def _own_stats(self, provider: str) -> models_pb2.GatewayWorkerStats:
        """This worker's own counters and breakers, for a sibling asking."""
        index = self.role.index if self.role is not None else 0
        return models_pb2.GatewayWorkerStats(
            worker=index, pid=os.getpid(), answered=True, providers=self._local_stats(provider)
        )

    async def provider_stats(self, provider: str) -> models_pb2.GetProviderStatsResponse:
        """GetProviderStats: this process's, or with workers the whole server's."""
        if self._siblings is None:
            return models_pb2.GetProviderStatsResponse(
                providers=self._local_stats(provider, await self._headroom(provider)),
                replica_id=self.replica_id,
            )
        own = self._own_stats(provider)
        del own.providers[:]
        own.providers.extend(self._local_stats(provider, await self._headroom(provider)))
        own.answering = True
        others = await self._siblings.stats(provider)
        return whole_server(self.replica_id, [own, *others])

    def _metrics_text(self) -> bytes:
        return generate_latest(self.metrics_registry)

    def _peer_failures(self) -> int:
        return self._siblings.failures if self._siblings is not None else 0

    def _cache_stats(self) -> dict[str, int] | None:
        cache = self.router.cache
        if cache is None:
            return None
        return {**cache.stats(), "coalesced": self.router.coalescer.shared}

    def _snapshot_from_any_thread(self) -> GatewaySnapshot | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        try:
            return on_loop(loop, self.snapshot)
        except Exception:  # a loop that has stopped, or is stuck: report calls only
            log.warning("gateway state not available to the metrics scrape")
            return None

    def _start_metrics(self) -> None:
        metrics = self.config.metrics
        if not metrics.HasField("port"):
            return
        host = metrics.host or DEFAULT_METRICS_HOST
        endpoint = MetricsEndpoint(self.metrics_registry, host, metrics.port)
        try:
            port = endpoint.start()
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{metrics.port}: {exc}") from exc
        self._metrics_endpoint = endpoint
        log.info("metrics listening", extra={"fields": {"address": f"{host}:{port}"}})

    @property
    def metrics_port(self) -> int:
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else 0

    @property
    def metrics_host(self) -> str:
        return self._metrics_endpoint.host if self._metrics_endpoint is not None else ""

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        credentials = self._credentials()
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(self.address)
            else:
                self.port = self._server.add_secure_port(self.address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        self._start_metrics()
        if self._peer is not None:
            await self._peer.start()
        await self.audit.start()
        if self.verifier is not None:
            await self.verifier.start()
        if self.shared_store is not None:
            if not await self.shared_store.reachable():
                # Not fatal: a store that comes back later is used from then on.
                log.warning("shared store unreachable at start")
            loop = asyncio.get_running_loop()
            self._background.append(
                loop.create_task(self.limiter.charge_pending_every(self._store_pause))
            )
            if self.shared_breakers is not None:
                await self.shared_breakers.poll()
                self._background.append(loop.create_task(self.shared_breakers.run()))
        await self._server.start()
        self.discovery.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish, then close
        what the server holds. Each step runs even when an earlier one fails."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self._grace if grace is None else grace)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("model discovery", self.discovery.aclose),
            ("providers", self.registry.aclose),
        ]
        if self.shared_breakers is not None:
            steps.append(("shared breakers", self.shared_breakers.aclose))
        if self.shared_store is not None:
            # Spend kept during an outage: one last try before the process goes.
            steps.append(("pending spend", self.limiter.charge_pending))
            steps.append(("shared store", self.shared_store.aclose))
        if self.verifier is not None:
            steps.append(("token verifier", self.verifier.close))
        # After the last call has ended: its record is in.
        steps.append(("audit log", self.audit.close))
        if self.tracer_provider is not None:
            # Sends the spans still batched (the exporter blocks: off the event loop).
            steps.append(("traces", partial(asyncio.to_thread, self.tracer_provider.shutdown)))
        if self._siblings is not None:
            steps.append(("sibling channels", self._siblings.aclose))
        if self._peer is not None:
            # After the calls: a sibling may ask for stats while this worker drains.
            steps.append(("worker socket", self._peer.stop))
        if self._metrics_endpoint is not None:
            # Its HTTP server stops between polls: off the event loop.
            steps.append(("metrics", partial(asyncio.to_thread, self._metrics_endpoint.stop)))
        for name, close in steps:
            try:
                await close()
            except Exception:
                log.exception("closing failed", extra={"fields": {"part": name}})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
        await self._server.wait_for_termination()


def announce(config: config_pb2.GatewayConfig, port: int, workers: int = 1) -> None:
    """The "listening" line (the port is ready on every worker) and start-up warnings."""
    host = config.server.host or "0.0.0.0"
    fields: dict[str, object] = {"address": f"{host}:{port}", "port": port}
    fields["service"] = SERVICE_NAME
    if workers > 1:
        fields["workers"] = workers
    log.info("listening", extra={"fields": fields})
    for warning in plaintext_credential_warnings(config):
        log.warning(warning)
    if config.auth.disabled:
        log.warning("authentication is disabled: every caller is 'anonymous'")
    else:
        log.info(
            "callers need a bearer token; for development: "
            "python -m service token --sub alice --config FILE (or make token)"
        )


async def serve(
    config: config_pb2.GatewayConfig,
    role: WorkerRole | None = None,
    ready: Callable[[int], None] | None = None,
    as_written: config_pb2.GatewayConfig | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully. A worker (`role`) tells
    its supervisor through `ready` instead of announcing the port itself. `as_written`
    is the configuration before providers without keys were left out (LoadedConfig)."""
    server = GatewayServer(config, role=role, as_written=as_written)
    port = await server.start()
    if role is None:
        announce(config, port)
    else:
        log.info(
            "worker ready",
            extra={"fields": {"worker": role.index, "pid": os.getpid(), "port": port}},
        )
    if ready is not None:
        ready(port)
    loop = asyncio.get_running_loop()
    stop_task: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
        if not stop_task:
            stop_task.append(loop.create_task(server.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reporter = loop.create_task(_report_suppressed_logs())
    await server.wait_stopped()
    if stop_task:
        await stop_task[0]
    reporter.cancel()
    report_suppressed()
    log.info("stopped")


async def _report_suppressed_logs() -> None:
    """A summary of the log records held back as repeats, once per window."""
    while True:
        await asyncio.sleep(WINDOW)
        report_suppressed()
