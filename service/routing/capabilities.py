"""Refuses requests that need something the chosen model cannot do. Pure."""

from __future__ import annotations

from llmgateway.v1 import chat_pb2

from service.errors import unsupported_capability
from service.providers import provider_options, unsupported
from service.providers.base import Deployment
from service.routing.record import CallRecord


def dropped_settings(
    request: chat_pb2.ChatRequest, deployment: Deployment, streaming: bool
) -> list[str]:
    """The request's settings that `deployment` cannot take (docs/providers.md, "Request
    settings"), provider_options included where its alias does not allow them."""
    names = unsupported.unsupported(request, deployment.provider_type, streaming)
    if (
        request.provider_options.fields
        and not deployment.allow_provider_options
        and "provider_options" not in names
    ):
        names.append("provider_options")
    return names


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
    dropped = dropped_settings(request, deployment, streaming)
    if dropped and not deployment.drop_unsupported:
        name = dropped[0]
        what = name.rpartition(".")[2]
        if name == "messages[].name":
            what = f"participant names ({deployment.provider_type} provider)"
        elif name == "provider_options":
            what = "provider_options (allow_provider_options is off)"
        elif streaming and name in unsupported.CHAT_ONLY:
            what = f"{what} in StreamChat"
        else:
            what = f"{what} ({deployment.provider_type} provider)"
        raise unsupported_capability(unsupported.field_path(request, name), alias, what)
    if request.provider_options.fields and "provider_options" not in dropped:
        provider_options.check(request.provider_options, deployment.provider_type)


def as_sent(
    request: chat_pb2.ChatRequest, deployment: Deployment, record: CallRecord, streaming: bool
) -> chat_pb2.ChatRequest:
    """The request as `deployment` gets it: without the settings it cannot take when its
    alias drops them (check_chat refused them otherwise), noted in `record` for the
    route."""
    dropped = (
        dropped_settings(request, deployment, streaming) if deployment.drop_unsupported else []
    )
    record.dropped_settings = dropped
    return unsupported.without(request, dropped)


def check_embed(deployment: Deployment) -> None:
    if not deployment.capabilities.embeddings:
        raise unsupported_capability("model", deployment.alias, "embeddings")
