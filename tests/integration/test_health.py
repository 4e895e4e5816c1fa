"""grpc.health.v1.Health: Watch streams end when the server starts draining, so that an
open watcher never holds a graceful shutdown for its grace period."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import running_gateway

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# Far longer than the test may run: stop() can only return early because nothing holds it.
GRACE = 600.0


async def _read_until_the_end(call: grpc.aio.UnaryStreamCall) -> list[int]:  # type: ignore[type-arg]
    statuses = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        statuses.append(reply.status)
    return statuses


@pytest.mark.timeout(GRACE / 20)
async def test_draining_sends_not_serving_and_ends_every_watch() -> None:
    async with running_gateway() as gateway:
        health = health_pb2_grpc.HealthStub(gateway.channel)
        watches = {
            service: health.Watch(health_pb2.HealthCheckRequest(service=service))
            for service in ("", "llmgateway.v1.ProviderService", "no.such.Service")
        }
        first = {service: (await call.read()).status for service, call in watches.items()}
        assert first == {
            "": SERVING,
            "llmgateway.v1.ProviderService": SERVING,
            "no.such.Service": SERVICE_UNKNOWN,
        }
        stopping = asyncio.ensure_future(gateway.server.stop(GRACE))
        async with asyncio.timeout(GRACE / 30):
            for service, call in watches.items():
                assert await _read_until_the_end(call) == [NOT_SERVING], service
                assert await call.code() == grpc.StatusCode.OK, "the stream ended with a status"
            # No watcher holds the server any more: stop() returns long before its grace.
            await stopping
        assert await gateway.server.health.Check(
            health_pb2.HealthCheckRequest(service=""), None
        ) == health_pb2.HealthCheckResponse(status=NOT_SERVING)


async def test_set_is_ignored_once_draining_and_a_new_watch_ends_at_once() -> None:
    async with running_gateway() as gateway:
        health = gateway.server.health
        await health.set("extra", SERVING)
        await health.enter_graceful_shutdown()
        await health.set("extra", SERVING)
        replies = [r.status async for r in health.Watch(health_pb2.HealthCheckRequest(), None)]
        assert replies == [NOT_SERVING]
        check = await health.Check(health_pb2.HealthCheckRequest(service="extra"), None)
        assert check.status == NOT_SERVING
