"""A provider class of a user's own, loaded by the gateway from `custom.class_path`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.providers.base import CallContext, Capabilities, Deployment, Provider


class ShoutingProvider(Provider):
    """Answers with the last user text in upper case, with a configurable suffix."""

    kind = "shouting"
    default_capabilities = Capabilities(
        streaming=True, tools=False, vision=False, json_output=False
    )

    def __init__(
        self, name: str, settings: dict[str, Any], config: config_pb2.ProviderConfig
    ) -> None:
        super().__init__(name)
        self.suffix = str(settings.get("suffix", "!"))
        self.closed = False

    def _reply(self, request: chat_pb2.ChatRequest) -> str:
        text = " ".join(
            p.text for p in request.messages[-1].parts if p.WhichOneof("kind") == "text"
        )
        return text.upper() + self.suffix

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        message = content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(text=self._reply(request))]
        )
        return chat_pb2.ChatResponse(
            message=message,
            finish_reason=chat_pb2.FINISH_REASON_STOP,
            raw_finish_reason="done",
            usage=route_pb2.Usage(input_tokens=1, output_tokens=1, total_tokens=2),
        )

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        yield chat_pb2.StreamChatResponse(
            text_delta=self._reply(request), finish_reason=chat_pb2.FINISH_REASON_STOP
        )
        yield chat_pb2.StreamChatResponse(
            usage=route_pb2.Usage(input_tokens=1, output_tokens=1, total_tokens=2)
        )

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        return embed_pb2.EmbedResponse(
            embeddings=[
                embed_pb2.Embedding(index=i, values=[float(len(t))])
                for i, t in enumerate(request.inputs)
            ]
        )


class NotAProvider:
    pass
