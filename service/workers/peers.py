"""The private endpoint each worker serves on a Unix socket, and the clients that ask it.

A worker answers two questions about itself, and nothing else: its own provider
statistics (for GetProviderStats answered by a sibling) and its own metrics in the text
exposition format (for the supervisor's metrics endpoint). The socket lives in a
directory only the gateway's user can enter; the endpoint has no interceptors, no auth
and no audit, and is never reachable from the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from llmgateway.v1 import models_pb2

log = logging.getLogger(__name__)

PEER_SERVICE = "llmgateway.workers.WorkerPeer"
STATS_METHOD = f"/{PEER_SERVICE}/Stats"
METRICS_METHOD = f"/{PEER_SERVICE}/Metrics"
# A sibling busy with calls still answers in milliseconds; one that does not answer in
# this long is reported as not answering rather than holding up the caller.
PEER_TIMEOUT = 1.0


def socket_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"worker-{index}.sock")


def _identity(data: bytes) -> bytes:
    return data


StatsReader = Callable[[str], models_pb2.GatewayWorkerStats]
MetricsReader = Callable[[], bytes]


class PeerServer:
    """Serves one worker's own stats and metrics on its Unix socket."""

    def __init__(self, path: str, stats: StatsReader, metrics: MetricsReader) -> None:
        self.path = path
        self._stats = stats
        self._metrics = metrics
        self._server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Stats": grpc.unary_unary_rpc_method_handler(
                self._on_stats,
                request_deserializer=models_pb2.GetProviderStatsRequest.FromString,
                response_serializer=models_pb2.GatewayWorkerStats.SerializeToString,
            ),
            "Metrics": grpc.unary_unary_rpc_method_handler(
                self._on_metrics, request_deserializer=_identity, response_serializer=_identity
            ),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(PEER_SERVICE, handlers),)
        )

    async def _on_stats(
        self, request: models_pb2.GetProviderStatsRequest, context: Any
    ) -> models_pb2.GatewayWorkerStats:
        return self._stats(request.provider)

    async def _on_metrics(self, request: bytes, context: Any) -> bytes:
        return self._metrics()

    async def start(self) -> None:
        # A socket left by the worker this one replaces would make the bind fail.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._server.add_insecure_port(f"unix:{self.path}") == 0:
            raise OSError(f"cannot listen on unix:{self.path}")
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Siblings:
    """Asks the other workers of this server for their own stats, all at once, each
    within PEER_TIMEOUT. A sibling that does not answer is counted in `failures` and
    reported as not answering."""

    def __init__(self, run_dir: str, index: int, count: int, timeout: float = PEER_TIMEOUT):
        self.index = index
        self._timeout = timeout
        self._channels = {
            other: grpc.aio.insecure_channel(f"unix:{socket_path(run_dir, other)}")
            for other in range(count)
            if other != index
        }
        self.failures = 0

    async def stats(self, provider: str) -> list[models_pb2.GatewayWorkerStats]:
        others = sorted(self._channels)
        answers = await asyncio.gather(*(self._ask(other, provider) for other in others))
        return list(answers)

    async def _ask(self, other: int, provider: str) -> models_pb2.GatewayWorkerStats:
        call = self._channels[other].unary_unary(
            STATS_METHOD,
            request_serializer=models_pb2.GetProviderStatsRequest.SerializeToString,
            response_deserializer=models_pb2.GatewayWorkerStats.FromString,
        )
        try:
            answer: models_pb2.GatewayWorkerStats = await call(
                models_pb2.GetProviderStatsRequest(provider=provider), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            self.failures += 1
            log.warning(
                "worker did not answer for stats",
                extra={"fields": {"worker": other, "code": exc.code().name}},
            )
            return models_pb2.GatewayWorkerStats(worker=other, answered=False)
        return answer

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def fetch_metrics(channels: Sequence[grpc.Channel], index: int, timeout: float) -> bytes:
    """One worker's metrics text, asked over its socket (blocking: for the scrape thread)."""
    call = channels[index].unary_unary(
        METRICS_METHOD, request_serializer=_identity, response_deserializer=_identity
    )
    result: bytes = call(b"", timeout=timeout)
    return result
