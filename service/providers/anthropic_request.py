"""Anthropic Messages: the chat request, from the gateway's protos to Anthropic JSON.

Reference §4. System messages go to the top-level `system`; tool results become `user`
turns of `tool_result` blocks; tool calls become `tool_use` blocks whose `input` is the
parsed arguments object; reasoning goes back as signed `thinking` blocks (unsigned
reasoning is dropped). The first field Anthropic cannot take raises INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import grpc
from google.protobuf import json_format
from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument
from service.providers import anthropic_cache, reasoning
from service.providers.anthropic_documents import document_block
from service.validation import IMAGE_MIME_TYPES

MAX_TEMPERATURE = 1.0


def _image_block(image: content_pb2.Image, path: str) -> dict[str, Any]:
    if image.WhichOneof("source") == "data":
        source = {
            "type": "base64",
            "media_type": image.mime_type,
            "data": base64.b64encode(image.data).decode("ascii"),
        }
        return {"type": "image", "source": source}
    url = image.url
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, payload = url[len("data:") :].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64":
        raise invalid_argument([FieldViolation(f"{path}.url", "data URLs must be base64 encoded")])
    if media_type not in IMAGE_MIME_TYPES:
        described = ", ".join(sorted(IMAGE_MIME_TYPES))
        raise invalid_argument(
            [FieldViolation(f"{path}.url", f"the data URL's media type must be one of {described}")]
        )
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(
            [FieldViolation(f"{path}.url", "the data URL holds invalid base64")]
        ) from None
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": payload},
    }


def _tool_input(call: content_pb2.ToolCall, path: str) -> dict[str, Any]:
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        raise invalid_argument(
            [FieldViolation(f"{path}.arguments", "must be valid JSON")]
        ) from None
    if not isinstance(value, dict):
        raise invalid_argument(
            [FieldViolation(f"{path}.arguments", "must be a JSON object for Anthropic models")]
        )
    return value


def _blocks(message: content_pb2.Message, path: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message.parts):
        part_path = f"{path}.parts[{j}]"
        kind = part.WhichOneof("kind")
        if kind == "text":
            if not part.text:  # Anthropic rejects empty text blocks
                continue
            blocks.append({"type": "text", "text": part.text})
        elif kind == "image":
            blocks.append(_image_block(part.image, f"{part_path}.image"))
        elif kind == "tool_call":
            call = part.tool_call
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _tool_input(call, f"{part_path}.tool_call"),
                }
            )
        elif kind == "tool_result":
            result = part.tool_result
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": result.tool_call_id,
                "content": result.content,
            }
            if result.is_error:
                block["is_error"] = True
            blocks.append(block)
        elif kind == "reasoning" and part.reasoning.redacted:
            # Anthropic requires redacted thinking back unchanged in the next turns.
            blocks.append({"type": "redacted_thinking", "data": part.reasoning.redacted})
        elif kind == "reasoning" and part.reasoning.signature:
            # Unsigned reasoning (from another provider) cannot be verified upstream.
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": part.reasoning.text,
                    "signature": part.reasoning.signature,
                }
            )
        elif kind == "document":
            blocks.append(document_block(part.document, f"{part_path}.document"))
        else:
            continue
        if part.HasField("cache_control"):
            anthropic_cache.mark(blocks[-1], part.cache_control)
    if blocks and message.HasField("cache_control"):
        anthropic_cache.mark(blocks[-1], message.cache_control)
    return blocks


def _conversation(
    request: chat_pb2.ChatRequest,
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The top-level system prompt (one string, or text blocks when a system message
    carries a cache breakpoint) and the user/assistant turns."""
    system: list[str] = []
    system_messages: list[content_pb2.Message] = []
    messages: list[dict[str, Any]] = []
    previous_tool = False
    for i, message in enumerate(request.messages):
        path = f"messages[{i}]"
        if message.role == content_pb2.ROLE_SYSTEM:
            system.extend(p.text for p in message.parts if p.text)
            system_messages.append(message)
            continue
        blocks = _blocks(message, path)
        if message.role == content_pb2.ROLE_TOOL:
            if previous_tool:
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": "user", "content": blocks})
            previous_tool = True
            continue
        previous_tool = False
        role = "assistant" if message.role == content_pb2.ROLE_ASSISTANT else "user"
        messages.append({"role": role, "content": blocks})
    if any(anthropic_cache.has_breakpoint(m) for m in system_messages):
        return anthropic_cache.system_blocks(system_messages), messages
    return "\n\n".join(system), messages


def _tool_choice(request: chat_pb2.ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "tool_name":
        return {"type": "tool", "name": choice.tool_name}
    if which == "mode":
        mode = {
            content_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
            content_pb2.TOOL_CHOICE_MODE_NONE: "none",
            content_pb2.TOOL_CHOICE_MODE_REQUIRED: "any",
        }.get(choice.mode)
        if mode is not None:
            return {"type": mode}
    return None


def _tool(tool: content_pb2.Tool) -> dict[str, Any]:
    schema = (
        json_format.MessageToDict(tool.parameters)
        if tool.parameters.fields
        else {"type": "object", "properties": {}}
    )
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    out["input_schema"] = schema
    if tool.HasField("cache_control"):
        anthropic_cache.mark(out, tool.cache_control)
    return out


def _output_format(config: chat_pb2.GenerationConfig) -> dict[str, Any] | None:
    response_format = config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema = json_format.MessageToDict(response_format.json_schema)
        return {"type": "json_schema", "schema": schema}
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        # Anthropic's structured outputs take a schema only, and treat an object schema
        # without `additionalProperties: false` as an error or as "no properties" (`{}`):
        # there is no "any JSON object" mode to map this to.
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "CAPABILITY_UNSUPPORTED",
            "generation_config.response_format.type: Anthropic models have no JSON-object"
            " mode; give RESPONSE_FORMAT_TYPE_JSON_SCHEMA with a schema",
            metadata={"capability": "json_object"},
            field_violations=[
                FieldViolation(
                    "generation_config.response_format.type",
                    "RESPONSE_FORMAT_TYPE_JSON_OBJECT is not supported by Anthropic models;"
                    " use RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                )
            ],
        )
    return None


def chat_body(
    request: chat_pb2.ChatRequest, model: str, default_max_tokens: int, stream: bool
) -> dict[str, Any]:
    """The `messages` body for a chat request; `default_max_tokens` stands in for an unset
    `max_output_tokens`, which Anthropic requires."""
    config = request.generation_config
    budget = reasoning.anthropic_budget(config)
    if config.HasField("max_output_tokens"):
        max_tokens = config.max_output_tokens
    elif budget is not None and not config.HasField("reasoning_budget_tokens"):
        # An effort's budget comes on top of the default answer length.
        max_tokens = budget + default_max_tokens
    else:
        max_tokens = default_max_tokens
    anthropic_cache.check_breakpoints(request)
    system, messages = _conversation(request)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if system:
        body["system"] = system
    body["messages"] = messages
    if config.HasField("temperature"):
        if config.temperature > MAX_TEMPERATURE:
            raise invalid_argument(
                [
                    FieldViolation(
                        "generation_config.temperature", "must be 0 to 1 for Anthropic models"
                    )
                ]
            )
        body["temperature"] = config.temperature
    if config.HasField("top_p"):
        body["top_p"] = config.top_p
    if config.HasField("top_k"):
        body["top_k"] = config.top_k
    if config.stop_sequences:
        body["stop_sequences"] = list(config.stop_sequences)
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
        choice = _tool_choice(request)
        if choice is not None:
            body["tool_choice"] = choice
    if budget is not None:
        field = (
            "generation_config.reasoning_budget_tokens"
            if config.HasField("reasoning_budget_tokens")
            else "generation_config.reasoning_effort"
        )
        if budget >= max_tokens:
            raise invalid_argument(
                [
                    FieldViolation(
                        field,
                        f"needs a thinking budget ({budget}) below the output token limit"
                        f" ({max_tokens})",
                    )
                ]
            )
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    output_format = _output_format(config)
    if output_format is not None:
        body["output_config"] = {"format": output_format}
    # seed, the penalties, logprobs and candidate_count have no Anthropic equivalent:
    # routing refuses them (service/providers/unsupported.py) before this is called.
    if stream:
        body["stream"] = True
    return body


# The fields of a Messages body that `messages/count_tokens` takes; sampling settings and
# `max_tokens` are refused there.
_COUNTED_FIELDS = ("model", "system", "messages", "tools", "tool_choice", "thinking")


def count_tokens_body(
    request: chat_pb2.ChatRequest, model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The `messages/count_tokens` body: the chat body's prompt fields only."""
    body = chat_body(request, model, default_max_tokens, stream=False)
    return {name: body[name] for name in _COUNTED_FIELDS if name in body}
