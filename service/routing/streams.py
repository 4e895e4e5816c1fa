"""The stream path: a streamed chat from plan to its last chunk.

A stream may be retried and moved to a fallback only until its first chunk (opening
it is the executor's attempt); after that it ends with its final chunk or with a
status that says it was cut (partialOutput, chunksDelivered). The first-token and
idle timeouts are held only while waiting for the upstream. The open stream counts
as a call in flight for the balancer, and its outcome goes to the breaker and the
stats when it ends, and its usage to the deployment's rate limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from llmgateway.v1 import chat_pb2, route_pb2

from service.errors import GatewayError, deadline_exceeded, internal
from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.providers.upstream_errors import transport_failure
from service.routing.balancer import Balancer
from service.routing.capabilities import as_sent, check_chat
from service.routing.executor import Executor
from service.routing.planner import Planner
from service.routing.pricing import apply_cost
from service.routing.record import CallRecord
from service.routing.resilience import Resilience
from service.routing.stats import Outcome, StatsBook

T = TypeVar("T")


@dataclass
class _Opened(Generic[T]):
    """A stream whose first chunk has arrived."""

    first: T
    rest: AsyncIterator[T]
    started: float


class Streams:
    def __init__(
        self,
        registry: Registry,
        planner: Planner,
        executor: Executor,
        resilience: Resilience,
        stats: StatsBook,
        balancer: Balancer,
    ) -> None:
        self.registry = registry
        self.planner = planner
        self.executor = executor
        self.resilience = resilience
        self.stats = stats
        self.balancer = balancer

    async def chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        record = record or CallRecord()
        noted: CallRecord = record
        loop = asyncio.get_running_loop()

        def check(d: Deployment) -> None:
            check_chat(request, d, streaming=True)

        async def open_stream(
            d: Deployment, actx: CallContext
        ) -> _Opened[chat_pb2.StreamChatResponse]:
            sent = as_sent(request, d, noted, streaming=True)
            stream = self.registry.provider(d.provider).stream_chat(sent, d, actx)
            started = loop.time()
            try:
                first = await _next_chunk(
                    stream, actx.deadline, d.timeouts.first_token, d, "first_token"
                )
            except BaseException:
                await _close(stream)
                raise
            if first is None:
                raise internal("the upstream stream ended before its first chunk")
            return _Opened(first, stream, started)

        opened, deployment = await self.executor.run(
            self.planner.chain(self.planner.primary(request.model, check), check, ctx),
            ctx,
            record,
            check,
            open_stream,
            count_success=False,
            prompt=request,
        )
        started = opened.started
        # The final chunk names the upstream request as the first one did.
        route = record.route(opened.first.route.upstream_request_id)
        stream = opened.rest
        chunk: chat_pb2.StreamChatResponse | None = opened.first
        finished = False
        outcome = Outcome.FAILURE
        usage: route_pb2.Usage | None = None  # the final chunk's, for the rate limit
        breaker = self.resilience.breaker(deployment)
        self.balancer.started(deployment)  # the open stream is a call in flight
        try:
            while chunk is not None:
                if record.chunks_delivered == 0:
                    chunk.route.MergeFrom(route)
                if chunk.HasField("usage"):
                    usage = chunk.usage
                    chunk.route.MergeFrom(route)
                    apply_cost(chunk.usage, deployment.pricing)
                    self.stats.fleet.usage(deployment, chunk.usage)
                finished = finished or chunk.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED
                record.chunks_delivered += 1
                yield chunk
                chunk = await _next_chunk(
                    stream, ctx.deadline, deployment.timeouts.idle, deployment, "idle"
                )
            if not finished:
                # Defence in depth: adapters raise on a cut stream themselves.
                raise internal("the upstream stream ended without a finish reason")
            outcome = Outcome.SUCCESS
            breaker.success()
        except GatewayError as error:
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome = Outcome.CANCELLED
            elif error.failover and error.upstream_fault:
                breaker.failure()
            error.retryable = False
            error.failover = False
            error.with_metadata(partialOutput="true", chunksDelivered=str(record.chunks_delivered))
            raise record.annotate(error) from None
        except (asyncio.CancelledError, GeneratorExit):
            outcome = Outcome.CANCELLED
            raise
        finally:
            self.balancer.finished(deployment)
            await _close(stream)
            await self.executor.settle(record, usage)
            self.stats.finished(deployment.provider, outcome, loop.time() - started)
            self.stats.fleet.attempt(deployment, outcome, loop.time() - started)


async def _next_chunk(
    stream: AsyncIterator[T],
    deadline: float,
    limit: float | None,
    deployment: Deployment,
    name: str,
) -> T | None:
    """The next chunk, or None at the end of the stream. The timeout is held only while
    waiting for the upstream, never across the caller's own work between chunks."""
    loop = asyncio.get_running_loop()
    until = deadline if limit is None else min(deadline, loop.time() + limit)
    try:
        async with asyncio.timeout_at(until):
            return await anext(stream)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        if until >= deadline:
            raise deadline_exceeded(0) from None
        raise transport_failure(
            deployment.provider, deployment.upstream_model, "timeout", name
        ) from None


async def _close(stream: AsyncIterator[object]) -> None:
    """Closes a provider's stream (and with it the upstream request) at once."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
