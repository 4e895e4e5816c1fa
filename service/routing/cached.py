"""The cache and coalescing path of unary calls: an answer from the response cache,
or from an identical call in flight, instead of an upstream call of this call's own.

Only aliases with a cache_ttl take this path, and only while a cache is configured.
`x-llm-cache: bypass` skips the cache and coalescing; `refresh` skips reading the cache
but stores the new answer. An answer given without an upstream call costs nothing and
counts no attempts; its route still names the deployment that produced it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message
from llmgateway.v1 import chat_pb2, embed_pb2

from service.errors import GatewayError, deadline_exceeded
from service.providers.base import CallContext, Deployment
from service.routing.cache import Cache
from service.routing.coalesce import Coalescer
from service.routing.planner import Planner
from service.routing.record import CallRecord

R = TypeVar("R", chat_pb2.ChatResponse, embed_pb2.EmbedResponse)
# Request metadata: "bypass" (neither cache nor coalescing) or "refresh" (store anew).
CACHE_CONTROL_KEY = "x-llm-cache"


class CachedCalls:
    def __init__(self, planner: Planner, cache: Cache | None) -> None:
        self.planner = planner
        self.cache = cache
        self.coalescer: Coalescer[Message] = Coalescer()

    async def answer(
        self,
        request: Message,
        primary: Deployment,
        ctx: CallContext,
        record: CallRecord,
        run: Callable[[], Awaitable[R]],
        answer_type: type[R],
    ) -> R:
        """`run()`, or the cached answer to the same request, or the answer of an
        identical call in flight. `x-llm-cache: bypass` skips the cache and coalescing;
        `refresh` skips reading the cache but stores the new answer.

        A call that joins another waits no longer than its own deadline; when the shared
        work failed for the first caller's deadline, it runs on its own time."""
        ttl = primary.cache_ttl
        if self.cache is None or ttl is None:
            return await run()
        mode = ctx.metadata.get(CACHE_CONTROL_KEY, "")
        if mode == "bypass":
            return await run()
        cache = self.cache
        key = cache.key(request, ctx.identity)
        if mode != "refresh":
            hit = await cache.lookup(key, answer_type)
            if hit is not None:
                served = self.planner.named(hit.route, primary)
                return _without_upstream(hit, served, record, cache_hit=True)

        async def work() -> Message:
            response = await run()
            await cache.store(key, response, ttl)
            return response

        joining = key in self.coalescer
        try:
            async with asyncio.timeout_at(ctx.deadline):
                response, shared = await self.coalescer.run(key, work)
        except TimeoutError:
            raise deadline_exceeded(record.attempts) from None
        except GatewayError as error:
            if not joining:
                raise
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return await run()  # the first caller's deadline, not this one's
            raise error.copy() from None
        answer = answer_type()
        answer.CopyFrom(cast(R, response))  # each caller's own: the servicer changes it
        served = self.planner.named(answer.route, primary)
        if shared:
            return _without_upstream(answer, served, record, coalesced=True)
        if record.served_by is None:  # the caller that started it left: this one owns it
            record.served_by = served
            record.attempts = answer.route.attempts
            record.fallback_used = answer.route.fallback_used
        return answer


def _without_upstream(
    response: R,
    served: Deployment,
    record: CallRecord,
    *,
    cache_hit: bool = False,
    coalesced: bool = False,
) -> R:
    """An answer this call got without an upstream call of its own: no attempts, no
    cost; the route still names the deployment that produced it."""
    route = response.route
    usage = response.usage
    route.attempts = 0
    route.cache_hit = cache_hit
    route.coalesced = coalesced
    if usage.HasField("cost_usd"):
        usage.cost_usd = 0.0
    record.cache_hit = cache_hit
    record.coalesced = coalesced
    record.fallback_used = route.fallback_used
    record.served_by = served
    return response
