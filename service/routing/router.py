"""Policy between the servicer and the providers: the facade over routing's parts.

The router never speaks HTTP. For each call the planner (planner.py) builds the chain
of deployments (the alias, then its fallbacks), and the executor (executor.py) runs
attempts along it (attempt.py: one try): retries of transient failures with capped,
fully jittered backoff (Retry-After as a floor), a retry budget per provider, a
circuit breaker per deployment (and a quota cool-down after the provider said the
account is out of quota), the providers' own rate limits (quotas.py: reserved before
each request, reconciled with its usage), every attempt inside the caller's deadline. Unary answers
may come from the cache or an identical call in flight (cached.py). Streams
(streams.py) may be retried and moved to a fallback only until their first chunk;
after that they end with their final chunk or with a status that says they were cut.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from llmgateway.v1 import chat_pb2, count_tokens_pb2, embed_pb2
from opentelemetry import trace

from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.providers.upstream_errors import transport_failure
from service.routing.attempt import Attempts
from service.routing.availability import Availability
from service.routing.balancer import Balancer
from service.routing.batching import EmbedBatcher
from service.routing.cache import Cache
from service.routing.cached import CachedCalls
from service.routing.capabilities import as_sent, check_chat, check_embed
from service.routing.coalesce import Coalescer
from service.routing.discovery import Discovery
from service.routing.executor import Executor
from service.routing.planner import Check, Planner
from service.routing.pricing import apply_cost
from service.routing.quotas import UpstreamQuotas
from service.routing.record import CallRecord
from service.routing.resilience import Resilience
from service.routing.stats import StatsBook
from service.routing.streams import Streams
from service.routing.token_counts import TokenCounts

__all__ = ["CallRecord", "Router"]

R = TypeVar("R", chat_pb2.ChatResponse, embed_pb2.EmbedResponse)


class Router:
    def __init__(
        self,
        registry: Registry,
        stats: StatsBook,
        resilience: Resilience,
        uniform: Callable[[float, float], float] = random.uniform,
        balancer: Balancer | None = None,
        cache: Cache | None = None,
        tracer: trace.Tracer | None = None,
        quotas: UpstreamQuotas | None = None,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.resilience = resilience
        balancer = balancer or Balancer()
        self.quotas = quotas or UpstreamQuotas(deployments=registry.every_deployment())
        self.availability = Availability(resilience, has_headroom=self.quotas.has_headroom)
        self.planner = Planner(registry, balancer, self.availability.can_take)
        self.attempts = Attempts(stats, balancer, tracer or trace.NoOpTracer())
        self.executor = Executor(
            self.planner, self.attempts, resilience, stats, uniform, self.quotas
        )
        self.cached = CachedCalls(self.planner, cache)
        self.batcher = EmbedBatcher()
        self.discovery = Discovery({}, {})  # the server's, once it has one
        self.streams = Streams(registry, self.planner, self.executor, resilience, stats, balancer)
        self.token_counts = TokenCounts(registry, self.planner, self.executor)

    @property
    def balancer(self) -> Balancer:
        """The load balancer: it orders pools for the planner and counts the calls in
        flight that attempts and open streams start."""
        return self.planner.balancer

    @balancer.setter
    def balancer(self, balancer: Balancer) -> None:
        self.planner.balancer = self.attempts.balancer = self.streams.balancer = balancer

    @property
    def tracer(self) -> trace.Tracer:
        return self.attempts.tracer

    @property
    def cache(self) -> Cache | None:
        return self.cached.cache

    @property
    def coalescer(self) -> Coalescer[Message]:
        return self.cached.coalescer

    # --- unary -----------------------------------------------------------------------

    async def chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> chat_pb2.ChatResponse:
        record = record or CallRecord()

        def check(d: Deployment) -> None:
            check_chat(request, d, streaming=False)

        async def attempt(d: Deployment, actx: CallContext) -> chat_pb2.ChatResponse:
            sent = as_sent(request, d, record, streaming=False)
            return await self.registry.provider(d.provider).chat(sent, d, actx)

        return await self._unary(
            request, ctx, record, check, attempt, chat_pb2.ChatResponse, prompt=request
        )

    async def embed(
        self, request: embed_pb2.EmbedRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> embed_pb2.EmbedResponse:
        record = record or CallRecord()

        async def attempt(d: Deployment, actx: CallContext) -> embed_pb2.EmbedResponse:
            provider = self.registry.provider(d.provider)
            if d.batch is not None:
                response = await self.batcher.embed(provider, request, d, actx)
            else:
                response = await provider.embed(request, d, actx)
            if len(response.embeddings) != len(request.inputs):
                raise transport_failure(
                    d.provider,
                    d.upstream_model,
                    "protocol",
                    f"{len(response.embeddings)} embeddings for {len(request.inputs)} inputs",
                )
            return response

        return await self._unary(
            request, ctx, record, check_embed, attempt, embed_pb2.EmbedResponse, "embeddings"
        )

    async def _unary(
        self,
        request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest,
        ctx: CallContext,
        record: CallRecord,
        check: Check,
        attempt: Callable[[Deployment, CallContext], Awaitable[R]],
        answer_type: type[R],
        operation: str = "chat",
        prompt: chat_pb2.ChatRequest | None = None,
    ) -> R:
        primary = self.planner.primary(request.model, check)

        async def run() -> R:
            chain = self.planner.chain(primary, check, ctx)  # only for calls that go upstream
            response, deployment = await self.executor.run(
                chain,
                ctx,
                record,
                check,
                attempt,
                operation=operation,
                prompt=prompt,
                request=request,
            )
            await self.executor.settle(record, response.usage)
            response.route.CopyFrom(record.route(response.route.upstream_request_id))
            apply_cost(response.usage, deployment.pricing)
            self.stats.fleet.usage(deployment, response.usage)
            return response

        return await self.cached.answer(request, primary, ctx, record, run, answer_type)

    async def count_tokens(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> count_tokens_pb2.CountTokensResponse:
        """The request's input tokens (token_counts.py): never cached, never charged."""
        return await self.token_counts.count(request, ctx, record or CallRecord())

    # --- streaming -------------------------------------------------------------------

    def stream_chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        """The stream's chunks (streams.py); nothing happens until the first is asked for."""
        return self.streams.chat(request, ctx, record)
