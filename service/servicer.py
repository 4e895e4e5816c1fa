"""ProviderService: validate, hand to the router, return the result or a status.

The only place that ends an RPC with an error status. Any GatewayError becomes its
google.rpc.Status; anything unexpected becomes a generic INTERNAL (details logged,
never sent).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from llmgateway.v1 import (
    chat_pb2,
    embed_pb2,
    models_pb2,
    provider_service_pb2_grpc,
)

from service.errors import GatewayError, internal, to_rpc_status
from service.providers.base import CallContext
from service.routing.router import Router
from service.validation import validate_chat, validate_embed

log = logging.getLogger(__name__)
T = TypeVar("T")
DEADLINE_MARGIN = 0.25  # at most; 10 % of the budget, at least 50 ms


def _metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    def __init__(self, router: Router, max_call_duration: float) -> None:
        self._router = router
        self._max_call_duration = max_call_duration

    def _call_context(self, context: grpc.aio.ServicerContext[object, object]) -> CallContext:
        metadata = _metadata(context)
        remaining = context.time_remaining()
        if remaining is None:
            budget = self._max_call_duration
        else:
            # Finish a little before the caller's own timer fires, so that the caller
            # gets our DEADLINE_EXCEEDED with its details rather than a bare local one.
            margin = min(DEADLINE_MARGIN, max(0.05, remaining * 0.1))
            budget = min(remaining - margin, self._max_call_duration)
        return CallContext(
            request_id=metadata.get("x-request-id") or uuid.uuid4().hex,
            deadline=asyncio.get_running_loop().time() + budget,
            metadata=metadata,
        )

    async def _unary(
        self, context: grpc.aio.ServicerContext[object, object], call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await call()
        except GatewayError as error:
            await context.abort_with_status(to_rpc_status(error))
        except Exception:
            log.exception("unexpected error in %s", "unary call")
            await context.abort_with_status(to_rpc_status(internal()))
        raise AssertionError("abort_with_status always raises")

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> chat_pb2.ChatResponse:
        async def run() -> chat_pb2.ChatResponse:
            validate_chat(request)
            ctx = self._call_context(context)
            response = await self._router.chat(request, ctx)
            response.id = f"chat-{ctx.request_id}"
            response.model = request.model
            return response

        return await self._unary(context, run)

    async def StreamChat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        try:
            validate_chat(request)
            ctx = self._call_context(context)
            stream_id = f"chat-{ctx.request_id}"
            async for chunk in self._router.stream_chat(request, ctx):
                chunk.id = stream_id
                yield chunk
        except GatewayError as error:
            await context.abort_with_status(to_rpc_status(error))
        except Exception:
            log.exception("unexpected error in StreamChat")
            await context.abort_with_status(to_rpc_status(internal()))

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embed_pb2.EmbedResponse:
        async def run() -> embed_pb2.EmbedResponse:
            validate_embed(request)
            response = await self._router.embed(request, self._call_context(context))
            response.model = request.model
            return response

        return await self._unary(context, run)

    async def ListModels(
        self,
        request: models_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(
            models=[
                models_pb2.ModelInfo(
                    alias=d.alias,
                    provider=d.provider,
                    provider_type=d.provider_type,
                    upstream_model=d.upstream_model,
                    capabilities=d.capabilities.to_proto(),
                    context_window=d.context_window,
                )
                for d in self._router.registry.deployments()
                if not request.provider or d.provider == request.provider
            ]
        )

    async def GetProviderStats(
        self,
        request: models_pb2.GetProviderStatsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> models_pb2.GetProviderStatsResponse:
        return models_pb2.GetProviderStatsResponse(
            providers=self._router.stats.snapshot(
                request.provider, self._router.resilience.breakers
            )
        )
