"""Refuses requests that need something the chosen model cannot do. Pure."""

from __future__ import annotations

from llmgateway.v1 import chat_pb2

from service.errors import unsupported_capability
from service.providers.base import Deployment


def check_chat(request: chat_pb2.ChatRequest, deployment: Deployment, streaming: bool) -> None:
    caps = deployment.capabilities
    alias = deployment.alias
    if caps.embeddings:
        raise unsupported_capability("model", alias, "chat (it is an embedding model)")
    if streaming and not caps.streaming:
        raise unsupported_capability("model", alias, "streaming")
    if request.tools and not caps.tools:
        raise unsupported_capability("tools", alias, "tools")
    response_type = request.generation_config.response_format.type
    if (
        response_type
        in (
            chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
            chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        )
        and not caps.json_output
    ):
        raise unsupported_capability("generation_config.response_format", alias, "JSON output")
    if not caps.documents:
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                if part.WhichOneof("kind") == "document":
                    raise unsupported_capability(
                        f"messages[{i}].parts[{j}].document", alias, "document input"
                    )
    if not caps.vision:
        for i, message in enumerate(request.messages):
            for j, part in enumerate(message.parts):
                if part.WhichOneof("kind") == "image":
                    raise unsupported_capability(
                        f"messages[{i}].parts[{j}].image", alias, "image input"
                    )


def check_embed(deployment: Deployment) -> None:
    if not deployment.capabilities.embeddings:
        raise unsupported_capability("model", deployment.alias, "embeddings")
