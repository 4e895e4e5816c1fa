"""The built-in mock provider: no network, deterministic, with injectable faults.

Its "transport" half is timing: per-token delay, stalls and failures. What it says
comes from the pure half in mock_script.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2

from service.config import seconds_or
from service.providers import mock_script
from service.providers.base import CallContext, Capabilities, Deployment, Provider
from service.providers.mock_faults import Fault, apply_metadata, fault_from_config

DEFAULT_EMBEDDING_DIMENSIONS = 16


class MockProvider(Provider):
    kind = "mock"
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False
    )
    default_context_window = 32_768

    def __init__(self, name: str, config: config_pb2.MockProviderConfig) -> None:
        super().__init__(name)
        self._token_delay = seconds_or(config, "token_delay", 0.0)
        self._script = tuple(config.script)
        self._dimensions = (
            config.embedding_dimensions
            if config.HasField("embedding_dimensions")
            else DEFAULT_EMBEDDING_DIMENSIONS
        )
        self._fault = fault_from_config(config.fault)
        self._faults_from_metadata = config.faults_from_metadata

    def _fault_for(self, ctx: CallContext) -> Fault:
        if not self._faults_from_metadata:
            return self._fault
        return apply_metadata(self._fault, ctx.metadata, self.name)

    async def _gate(self, fault: Fault, deployment: Deployment, ctx: CallContext) -> None:
        """Stalls and fails as the fault says, at the point where it is applied."""
        if fault.stall:
            await asyncio.sleep(fault.stall)
        if fault.fails(ctx.attempt):
            raise fault.error(self.name, deployment.upstream_model)

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        await self._gate(self._fault_for(ctx), deployment, ctx)
        plan = mock_script.plan_reply(request, self._script)
        if self._token_delay:
            await asyncio.sleep(self._token_delay * plan.output_tokens)
        response = mock_script.to_response(plan)
        response.route.upstream_request_id = f"mock-{ctx.request_id}"
        return response

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        fault = self._fault_for(ctx)
        if fault.after_chunks is None:
            await self._gate(fault, deployment, ctx)
        chunks = mock_script.to_chunks(mock_script.plan_reply(request, self._script))
        for sent, chunk in enumerate(chunks):
            if sent == fault.after_chunks:
                await self._gate(fault, deployment, ctx)
            if self._token_delay and chunk.usage.total_tokens == 0:
                await asyncio.sleep(self._token_delay)
            yield chunk

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        await self._gate(self._fault_for(ctx), deployment, ctx)
        dimensions = request.dimensions if request.HasField("dimensions") else self._dimensions
        tokens = sum(mock_script.count_tokens(text) for text in request.inputs)
        return embed_pb2.EmbedResponse(
            embeddings=[
                embed_pb2.Embedding(index=i, values=mock_script.embedding(text, dimensions))
                for i, text in enumerate(request.inputs)
            ],
            usage=route_pb2.Usage(input_tokens=tokens, total_tokens=tokens),
        )
