"""The mock provider's pure half: what it answers, as chunks and as a whole.

Deterministic: the same request always gives the same reply, tool calls, usage and
embeddings. Tokens are whitespace-separated words, so tests can count them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, route_pb2

_WORDS = re.compile(r"\s*\S+")
IMAGE_TOKENS = 85  # what one image costs as input, like a low-detail image upstream
ARGUMENT_FRAGMENT = 8  # characters of tool-call arguments per streamed fragment


@dataclass(frozen=True)
class PlannedToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ReplyPlan:
    text: str
    tool_calls: tuple[PlannedToolCall, ...]
    finish_reason: chat_pb2.FinishReason.ValueType
    raw_finish_reason: str
    input_tokens: int

    @property
    def text_tokens(self) -> list[str]:
        return split_tokens(self.text)

    @property
    def output_tokens(self) -> int:
        return len(self.text_tokens) + sum(
            count_tokens(call.arguments) + 1 for call in self.tool_calls
        )

    def usage(self) -> route_pb2.Usage:
        output = self.output_tokens
        return route_pb2.Usage(
            input_tokens=self.input_tokens,
            output_tokens=output,
            total_tokens=self.input_tokens + output,
        )


def split_tokens(text: str) -> list[str]:
    """Words with their leading white space; trailing white space joins the last one."""
    tokens: list[str] = _WORDS.findall(text)
    tail = text[sum(map(len, tokens)) :]
    if tail:
        if tokens:
            tokens[-1] += tail
        else:
            tokens.append(tail)
    return tokens


def count_tokens(text: str) -> int:
    return len(_WORDS.findall(text))


def _part_tokens(part: content_pb2.Part) -> int:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return count_tokens(part.text)
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "tool_call":
        return count_tokens(part.tool_call.arguments) + 1
    if kind == "tool_result":
        return count_tokens(part.tool_result.content)
    if kind == "reasoning":
        return count_tokens(part.reasoning.text)
    return 0


def _message_text(message: content_pb2.Message) -> str:
    return " ".join(p.text for p in message.parts if p.WhichOneof("kind") == "text")


def _last_user_text(request: chat_pb2.ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == content_pb2.ROLE_USER:
            return _message_text(message)
    return ""


def _example_value(schema: dict[str, Any], text: str) -> Any:
    """A deterministic value that fits a JSON schema, seeded with the user's text."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _example_value(sub, text) for name, sub in sorted(properties.items())}
    if kind == "array":
        return [_example_value(schema.get("items", {}), text)] if text else []
    if kind == "integer":
        return count_tokens(text)
    if kind == "number":
        return float(count_tokens(text))
    if kind == "boolean":
        return bool(text)
    return text


def _schema(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct) if struct.fields else {}


def _chosen_tool(request: chat_pb2.ChatRequest, user_text: str) -> content_pb2.Tool | None:
    if not request.tools:
        return None
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "tool_name":
        return next((t for t in request.tools if t.name == choice.tool_name), None)
    if which == "mode" and choice.mode == content_pb2.TOOL_CHOICE_MODE_NONE:
        return None
    if which == "mode" and choice.mode == content_pb2.TOOL_CHOICE_MODE_REQUIRED:
        return request.tools[0]
    words = set(re.findall(r"[A-Za-z0-9_-]+", user_text))
    return next((t for t in request.tools if t.name in words), None)


def _tool_result_reply(request: chat_pb2.ChatRequest) -> str | None:
    """When the conversation ends with tool results, the mock reports them."""
    last = request.messages[-1]
    results = [p.tool_result for p in last.parts if p.WhichOneof("kind") == "tool_result"]
    if not results:
        return None
    names = {
        p.tool_call.id: p.tool_call.name
        for m in request.messages
        for p in m.parts
        if p.WhichOneof("kind") == "tool_call"
    }
    return " ".join(
        f"{r.name or names.get(r.tool_call_id, 'tool')} returned {r.content}" for r in results
    )


def _apply_limits(
    text: str, config: chat_pb2.GenerationConfig
) -> tuple[str, chat_pb2.FinishReason.ValueType, str]:
    for stop in config.stop_sequences:
        at = text.find(stop)
        if at >= 0:
            text = text[:at]
    if config.HasField("max_output_tokens"):
        words = split_tokens(text)
        if len(words) > config.max_output_tokens:
            return (
                "".join(words[: config.max_output_tokens]),
                chat_pb2.FINISH_REASON_LENGTH,
                "length",
            )
    return text, chat_pb2.FINISH_REASON_STOP, "stop"


def plan_reply(request: chat_pb2.ChatRequest, script: tuple[str, ...] = ()) -> ReplyPlan:
    """Decides the whole answer to a request."""
    input_tokens = sum(_part_tokens(p) for m in request.messages for p in m.parts)
    user_text = _last_user_text(request)
    tool_reply = _tool_result_reply(request)
    tool = None if tool_reply is not None else _chosen_tool(request, user_text)
    if tool is not None:
        arguments = json.dumps(
            _example_value(_schema(tool.parameters) or {"type": "object"}, user_text),
            separators=(",", ":"),
            sort_keys=True,
        )
        digest = hashlib.sha256(f"{tool.name}\0{arguments}".encode()).hexdigest()[:16]
        call = PlannedToolCall(id=f"call_{digest}", name=tool.name, arguments=arguments)
        return ReplyPlan("", (call,), chat_pb2.FINISH_REASON_TOOL_CALLS, "tool_calls", input_tokens)

    if tool_reply is not None:
        text = tool_reply
    elif script:
        turns = sum(1 for m in request.messages if m.role == content_pb2.ROLE_ASSISTANT)
        text = script[turns % len(script)]
    else:
        text = user_text
    response_format = request.generation_config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        text = json.dumps({"reply": text})
    elif response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        text = json.dumps(_example_value(_schema(response_format.json_schema), text))
    text, finish, raw = _apply_limits(text, request.generation_config)
    return ReplyPlan(text, (), finish, raw, input_tokens)


def to_response(plan: ReplyPlan) -> chat_pb2.ChatResponse:
    message = content_pb2.Message(role=content_pb2.ROLE_ASSISTANT)
    if plan.text or not plan.tool_calls:
        message.parts.add(text=plan.text)
    for call in plan.tool_calls:
        message.parts.add(
            tool_call=content_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)
        )
    return chat_pb2.ChatResponse(
        message=message,
        finish_reason=plan.finish_reason,
        raw_finish_reason=plan.raw_finish_reason,
        usage=plan.usage(),
    )


def to_chunks(plan: ReplyPlan) -> list[chat_pb2.StreamChatResponse]:
    """Content chunks (the last one with the finish reason), then a usage chunk."""
    chunks = [chat_pb2.StreamChatResponse(text_delta=token) for token in plan.text_tokens]
    for index, call in enumerate(plan.tool_calls):
        pieces = [
            call.arguments[i : i + ARGUMENT_FRAGMENT]
            for i in range(0, len(call.arguments), ARGUMENT_FRAGMENT)
        ] or [""]
        first = chat_pb2.ToolCallDelta(
            index=index, id=call.id, name=call.name, arguments_delta=pieces[0]
        )
        chunks.append(chat_pb2.StreamChatResponse(tool_call_deltas=[first]))
        chunks.extend(
            chat_pb2.StreamChatResponse(
                tool_call_deltas=[chat_pb2.ToolCallDelta(index=index, arguments_delta=piece)]
            )
            for piece in pieces[1:]
        )
    if not chunks:
        chunks.append(chat_pb2.StreamChatResponse())
    chunks[-1].finish_reason = plan.finish_reason
    chunks[-1].raw_finish_reason = plan.raw_finish_reason
    chunks.append(chat_pb2.StreamChatResponse(usage=plan.usage()))
    return chunks


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's SHA-256: equal texts, equal vectors."""
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{block}\0{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        block += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
