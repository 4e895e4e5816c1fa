"""Ollama's native API: responses and NDJSON stream lines, to the gateway's protos.

Response mapping (§6.3, §8): `message.thinking` → reasoning, `message.content` → text,
`message.tool_calls` → tool calls with the arguments object as compact JSON text and,
when Ollama sends no id, an id derived from the response's `created_at`, model and the
call's position in the turn. `done_reason` stop → STOP (TOOL_CALLS when the turn had
tool calls), length → LENGTH, anything else (load, unload, absent) → OTHER, raw value
kept. Usage: `prompt_eval_count` input (it already includes the KV-cached prefix),
`eval_count` output; absent counts are 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.providers.dialect import StreamParser, usage
from service.providers.ollama_errors import stream_error


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def call_id(created_at: str, model: str, position: int) -> str:
    """A stable id for a tool call Ollama sent without one."""
    digest = hashlib.sha256(f"{created_at}\n{model}\n{position}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _arguments_text(arguments: Any) -> str:
    """The arguments object as compact JSON text; a string is passed through."""
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return "{}"
    if not isinstance(arguments, dict):
        raise TypeError("tool call arguments are not an object")
    return _compact(arguments)


def _tool_calls(message: Mapping[str, Any]) -> list[Any]:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TypeError("tool_calls is not a list")
    return calls


def _call_fields(call: Any) -> tuple[str, str, str]:
    """Name, arguments JSON text and Ollama's own id ("" when it sent none)."""
    function = call["function"]
    name = function["name"]
    upstream_id = call.get("id") or ""
    if not isinstance(name, str) or not name or not isinstance(upstream_id, str):
        raise TypeError("a tool call needs a string name")
    return name, _arguments_text(function.get("arguments")), upstream_id


def _finish(raw: str, had_tool_calls: bool) -> chat_pb2.FinishReason.ValueType:
    if raw == "length":
        return chat_pb2.FINISH_REASON_LENGTH
    if had_tool_calls:
        return chat_pb2.FINISH_REASON_TOOL_CALLS
    if raw == "stop":
        return chat_pb2.FINISH_REASON_STOP
    return chat_pb2.FINISH_REASON_OTHER


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("token counts must be integers")
    return value


def _usage_of(data: Mapping[str, Any]) -> route_pb2.Usage:
    return usage(
        input_tokens=_count(data.get("prompt_eval_count")),
        output_tokens=_count(data.get("eval_count")),
    )


def parse_chat_body(data: Mapping[str, Any], model: str) -> chat_pb2.ChatResponse:
    """The ChatResponse for a non-streaming `api/chat` body (which must be done)."""
    if data.get("done") is not True:
        raise ValueError("a non-streaming response must be done")
    message = data["message"]
    if not isinstance(message, dict):
        raise TypeError("message is not an object")
    out = content_pb2.Message(role=content_pb2.ROLE_ASSISTANT)
    thinking = message.get("thinking") or ""
    content = message.get("content") or ""
    if not isinstance(thinking, str) or not isinstance(content, str):
        raise TypeError("message text is not a string")
    if thinking:
        out.parts.add(reasoning=content_pb2.Reasoning(text=thinking))
    if content:
        out.parts.add(text=content)
    created_at = str(data.get("created_at") or "")
    calls = _tool_calls(message)
    for position, call in enumerate(calls):
        name, arguments, upstream_id = _call_fields(call)
        out.parts.add(
            tool_call=content_pb2.ToolCall(
                id=upstream_id or call_id(created_at, model, position),
                name=name,
                arguments=arguments,
            )
        )
    raw = str(data.get("done_reason") or "")
    return chat_pb2.ChatResponse(
        message=out,
        finish_reason=_finish(raw, bool(calls)),
        raw_finish_reason=raw,
        usage=_usage_of(data),
    )


def parse_embed_body(data: Mapping[str, Any]) -> embed_pb2.EmbedResponse:
    """The EmbedResponse for an `api/embed` body."""
    vectors = data["embeddings"]
    if not isinstance(vectors, list):
        raise TypeError("embeddings is not a list")
    result = embed_pb2.EmbedResponse(
        usage=usage(input_tokens=_count(data.get("prompt_eval_count")))
    )
    for index, vector in enumerate(vectors):
        if not isinstance(vector, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in vector
        ):
            raise TypeError("an embedding is not a list of numbers")
        result.embeddings.add(index=index, values=vector)
    return result


# Errors --------------------------------------------------------------------------


class OllamaStreamParser(StreamParser):
    """One NDJSON ChatResponse object per event; the `done: true` object ends the turn."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._calls = 0

    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        if not isinstance(event, dict):
            raise TypeError("a stream line is not a JSON object")
        if "error" in event:
            error = event["error"]
            raise stream_error(self.provider, self.model, error if isinstance(error, str) else "")
        if self.finished:
            return []  # nothing is read after the final line; defensive
        chunk = chat_pb2.StreamChatResponse()
        message = event.get("message") or {}
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
        thinking = message.get("thinking") or ""
        content = message.get("content") or ""
        if not isinstance(thinking, str) or not isinstance(content, str):
            raise TypeError("message text is not a string")
        chunk.reasoning_delta = thinking
        chunk.text_delta = content
        created_at = str(event.get("created_at") or "")
        for call in _tool_calls(message):
            name, arguments, upstream_id = _call_fields(call)
            chunk.tool_call_deltas.append(
                chat_pb2.ToolCallDelta(
                    index=self._calls,
                    id=upstream_id or call_id(created_at, self.model, self._calls),
                    name=name,
                    arguments_delta=arguments,
                )
            )
            self._calls += 1
        done = event.get("done")
        if not isinstance(done, bool):
            raise TypeError("done is not a boolean")
        if done:
            raw = str(event.get("done_reason") or "")
            self.finish_reason = _finish(raw, self._calls > 0)
            chunk.finish_reason = self.finish_reason
            chunk.raw_finish_reason = raw
            self.usage = _usage_of(event)
            self.finished = True
            self.terminated = True
        return [chunk]
