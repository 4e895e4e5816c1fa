"""grpc.health.v1.Health, with Watch streams that end when the server starts draining.

grpc's reference servicer keeps every Watch stream open until the client leaves, so one
open watcher (a load balancer, a sidecar) holds a graceful shutdown for its whole grace
period. Here `enter_graceful_shutdown` sends NOT_SERVING to every watcher and then ends
its stream with OK; gRPC health clients treat the end of a Watch as a reason to look
again, and by then the server no longer takes calls. Check, set and the shutdown's
permanence behave as in the reference servicer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ServingStatus = int
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._version = 0  # bumped on every change, so that no watcher misses one
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status, then every change, until the server drains: then
        NOT_SERVING and the end of the stream."""
        last: ServingStatus | None = None
        while True:
            seen = self._version
            status = (
                NOT_SERVING
                if self._draining
                else self._status.get(request.service, SERVICE_UNKNOWN)
            )
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._draining:
                return
            await self._wait_past(seen)

    async def _wait_past(self, version: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != version)

    async def set(self, service: str, status: ServingStatus) -> None:
        """Sets a service's status ("" is the whole server); ignored once draining."""
        async with self._changed:
            if self._draining:
                return
            self._status[service] = status
            self._version += 1
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; every Watch gets it and ends."""
        if self._draining:
            return
        async with self._changed:
            self._draining = True
            for service in self._status:
                self._status[service] = NOT_SERVING
            self._version += 1
            self._changed.notify_all()
