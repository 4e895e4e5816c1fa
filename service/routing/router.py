"""Policy between the servicer and the providers: resolve, check, attempt, record.

The router never speaks HTTP. It turns a model name into a deployment, refuses what
the deployment cannot do, runs the attempt inside the caller's deadline, keeps the
statistics, and says in every response how the call was served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2

from service.errors import GatewayError, deadline_exceeded, internal
from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.routing.capabilities import check_chat, check_embed
from service.routing.pricing import apply_cost
from service.routing.stats import Outcome, StatsBook

T = TypeVar("T")


def _route(deployment: Deployment, attempts: int, request_id: str = "") -> route_pb2.RouteInfo:
    return route_pb2.RouteInfo(
        provider=deployment.provider,
        upstream_model=deployment.upstream_model,
        attempts=attempts,
        upstream_request_id=request_id,
    )


class Router:
    def __init__(self, registry: Registry, stats: StatsBook) -> None:
        self.registry = registry
        self.stats = stats

    async def _attempt(
        self, deployment: Deployment, ctx: CallContext, call: Callable[[], Awaitable[T]]
    ) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stats.started(deployment.provider)
        outcome = Outcome.FAILURE
        try:
            async with asyncio.timeout_at(ctx.deadline):
                result = await call()
            outcome = Outcome.SUCCESS
            return result
        except TimeoutError:
            outcome = Outcome.CANCELLED
            raise deadline_exceeded(ctx.attempt) from None
        except asyncio.CancelledError:
            outcome = Outcome.CANCELLED
            raise
        finally:
            self.stats.finished(deployment.provider, outcome, loop.time() - started)

    async def chat(self, request: chat_pb2.ChatRequest, ctx: CallContext) -> chat_pb2.ChatResponse:
        deployment = self.registry.resolve(request.model)
        check_chat(request, deployment, streaming=False)
        provider = self.registry.provider(deployment.provider)
        response = await self._attempt(
            deployment, ctx, lambda: provider.chat(request, deployment, ctx)
        )
        response.route.CopyFrom(_route(deployment, ctx.attempt, response.route.upstream_request_id))
        apply_cost(response.usage, deployment.pricing)
        return response

    async def embed(
        self, request: embed_pb2.EmbedRequest, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        deployment = self.registry.resolve(request.model)
        check_embed(deployment)
        provider = self.registry.provider(deployment.provider)
        response = await self._attempt(
            deployment, ctx, lambda: provider.embed(request, deployment, ctx)
        )
        response.route.CopyFrom(_route(deployment, ctx.attempt, response.route.upstream_request_id))
        apply_cost(response.usage, deployment.pricing)
        return response

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        deployment = self.registry.resolve(request.model)
        check_chat(request, deployment, streaming=True)
        provider = self.registry.provider(deployment.provider)
        route = _route(deployment, ctx.attempt)
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stats.started(deployment.provider)
        outcome = Outcome.FAILURE
        finished = False
        delivered = 0
        try:
            async with asyncio.timeout_at(ctx.deadline):
                async for chunk in provider.stream_chat(request, deployment, ctx):
                    if delivered == 0 or chunk.HasField("usage"):
                        chunk.route.MergeFrom(route)
                    if chunk.HasField("usage"):
                        apply_cost(chunk.usage, deployment.pricing)
                    finished = finished or chunk.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED
                    delivered += 1
                    yield chunk
            if not finished:
                # Defence in depth: adapters raise on a cut stream themselves.
                raise internal("the upstream stream ended without a finish reason")
            outcome = Outcome.SUCCESS
        except TimeoutError:
            outcome = Outcome.CANCELLED
            raise deadline_exceeded(ctx.attempt).with_metadata(
                chunksDelivered=str(delivered)
            ) from None
        except GatewayError as error:
            if delivered:
                error.retryable = False
                error.failover = False
                error.with_metadata(partialOutput="true", chunksDelivered=str(delivered))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = Outcome.CANCELLED
            raise
        finally:
            self.stats.finished(deployment.provider, outcome, loop.time() - started)
