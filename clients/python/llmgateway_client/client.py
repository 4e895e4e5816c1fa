"""GatewayClient: one channel, a bearer token, deadlines on every call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import grpc
from llmgateway.v1 import (
    chat_pb2,
    content_pb2,
    embed_pb2,
    models_pb2,
    provider_service_pb2_grpc,
)

from llmgateway_client.details import ErrorDetails, error_details

# gRPC retries UNAVAILABLE itself, with backoff, and never once a response has started.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "llmgateway.v1.ProviderService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class GatewayCallError(Exception):
    """A failed call, with the gateway's error details decoded."""

    def __init__(self, details: ErrorDetails) -> None:
        super().__init__(f"{details.code.name}: {details.message}")
        self.details = details


def user_message(text: str) -> content_pb2.Message:
    return content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])


def _messages(prompt: str | Sequence[content_pb2.Message]) -> list[content_pb2.Message]:
    return [user_message(prompt)] if isinstance(prompt, str) else list(prompt)


class GatewayClient:
    def __init__(
        self,
        address: str,
        token: str = "",
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 60.0,
    ) -> None:
        options = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = provider_service_pb2_grpc.ProviderServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def chat(
        self,
        model: str,
        prompt: str | Sequence[content_pb2.Message],
        config: chat_pb2.GenerationConfig | None = None,
        timeout: float | None = None,
    ) -> chat_pb2.ChatResponse:
        request = chat_pb2.ChatRequest(
            model=model, messages=_messages(prompt), generation_config=config
        )
        try:
            response: chat_pb2.ChatResponse = await self._stub.Chat(
                request, metadata=self._metadata, timeout=timeout or self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise GatewayCallError(error_details(error)) from None
        return response

    async def stream_chat(
        self,
        model: str,
        prompt: str | Sequence[content_pb2.Message],
        config: chat_pb2.GenerationConfig | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        request = chat_pb2.ChatRequest(
            model=model, messages=_messages(prompt), generation_config=config
        )
        async for chunk in self.stream_request(request, timeout):
            yield chunk

    async def stream_request(
        self, request: chat_pb2.ChatRequest, timeout: float | None = None
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        """StreamChat with a whole request: system messages, tools, any setting."""
        call = self._stub.StreamChat(
            request, metadata=self._metadata, timeout=timeout or self._timeout
        )
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as error:
            raise GatewayCallError(error_details(error)) from None

    async def embed(
        self, model: str, inputs: Sequence[str], timeout: float | None = None
    ) -> embed_pb2.EmbedResponse:
        request = embed_pb2.EmbedRequest(model=model, inputs=list(inputs))
        try:
            response: embed_pb2.EmbedResponse = await self._stub.Embed(
                request, metadata=self._metadata, timeout=timeout or self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise GatewayCallError(error_details(error)) from None
        return response

    async def list_models(self) -> list[models_pb2.ModelInfo]:
        try:
            response: models_pb2.ListModelsResponse = await self._stub.ListModels(
                models_pb2.ListModelsRequest(), metadata=self._metadata, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise GatewayCallError(error_details(error)) from None
        return list(response.models)
