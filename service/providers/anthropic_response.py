"""Anthropic Messages: responses and stream events, from Anthropic JSON to the gateway's
protos.

Reference §4.3, §4.4 and §8. Content blocks come back as text, tool_call and reasoning
parts; stream events as deltas, a tool call without arguments closing with "{}"; usage
counts in a stream are cumulative, the latest value of each field winning. An `error`
event inside a stream is raised as that error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmgateway.v1 import chat_pb2, content_pb2, route_pb2

from service.providers import provider_metadata
from service.providers.anthropic_errors import error_status, upstream_failure
from service.providers.dialect import StreamParser, usage
from service.providers.framing import SseEvent
from service.providers.upstream_errors import from_upstream

_FINISH: dict[str, chat_pb2.FinishReason.ValueType] = {
    "end_turn": chat_pb2.FINISH_REASON_STOP,
    "stop_sequence": chat_pb2.FINISH_REASON_STOP,
    "pause_turn": chat_pb2.FINISH_REASON_STOP,  # incomplete: resend to continue
    "max_tokens": chat_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": chat_pb2.FINISH_REASON_LENGTH,
    "tool_use": chat_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": chat_pb2.FINISH_REASON_REFUSAL,
}


# Anthropic gives no explanation with `stop_reason: refusal`: ChatResponse.refusal stays
# empty, the finish reason says it, and any text before the refusal stays in the message.
_METADATA_KEYS = {"stop_sequence": "stop_sequence"}


def finish_reason(raw: str) -> chat_pb2.FinishReason.ValueType:
    return _FINISH.get(raw, chat_pb2.FINISH_REASON_OTHER)


def usage_from(fields: Mapping[str, Any]) -> route_pb2.Usage:
    """Normalized usage (reference §8.2): Anthropic's `input_tokens` excludes cache reads
    and writes, so the prompt total is the sum of the three."""
    uncached = int(fields.get("input_tokens") or 0)
    cache_write = int(fields.get("cache_creation_input_tokens") or 0)
    cache_read = int(fields.get("cache_read_input_tokens") or 0)
    details = fields.get("output_tokens_details") or {}
    return usage(
        input_tokens=uncached + cache_write + cache_read,
        output_tokens=int(fields.get("output_tokens") or 0),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
        reasoning_tokens=int(details.get("thinking_tokens") or 0),
    )


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_chat_body(body: Any) -> chat_pb2.ChatResponse:
    """The ChatResponse for a Messages response body."""
    parts: list[content_pb2.Part] = []
    for block in body["content"]:
        kind = block["type"]
        if kind == "text":
            parts.append(content_pb2.Part(text=str(block["text"])))
        elif kind == "tool_use":
            call = content_pb2.ToolCall(
                id=str(block["id"]),
                name=str(block["name"]),
                arguments=compact_json(block["input"]),
            )
            parts.append(content_pb2.Part(tool_call=call))
        elif kind == "thinking":
            reasoning = content_pb2.Reasoning(
                text=str(block["thinking"]), signature=str(block.get("signature") or "")
            )
            parts.append(content_pb2.Part(reasoning=reasoning))
        elif kind == "redacted_thinking":
            redacted = content_pb2.Reasoning(redacted=str(block["data"]))
            parts.append(content_pb2.Part(reasoning=redacted))
    raw = body["stop_reason"]
    if not isinstance(raw, str) or not raw:
        raise ValueError("an Anthropic message without stop_reason")
    response = chat_pb2.ChatResponse(
        message=content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=parts),
        finish_reason=finish_reason(raw),
        raw_finish_reason=raw,
        usage=usage_from(body.get("usage") or {}),
    )
    metadata = provider_metadata.to_struct(provider_metadata.pick(body, _METADATA_KEYS))
    if metadata is not None:
        response.provider_metadata.CopyFrom(metadata)
    # The message's id (`msg_…`): the route's id when no request-id header names one.
    response.route.upstream_request_id = str(body.get("id") or "")
    return response


class AnthropicStreamParser(StreamParser):
    """Messages stream events (reference §4.4) → chunks."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._usage_fields: dict[str, Any] = {}
        self._tool_of_block: dict[int, int] = {}  # content-block index → tool call index
        self._tool_has_arguments: dict[int, bool] = {}
        self._tools = 0
        self._metadata: dict[str, Any] = {}

    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        if self.terminated:
            return []
        if not isinstance(event, SseEvent):
            raise TypeError("the Anthropic dialect reads SSE events")
        if not event.data:
            return []
        data = json.loads(event.data)
        if not isinstance(data, dict):
            raise ValueError("an Anthropic stream event is not a JSON object")
        name = event.event or str(data.get("type") or "")
        if name == "message_start":
            self.response_id = str(data["message"].get("id") or "")
            self._take_usage(data["message"].get("usage") or {})
            return []
        if name == "content_block_start":
            return self._block_start(int(data["index"]), data["content_block"])
        if name == "content_block_delta":
            return self._block_delta(int(data["index"]), data["delta"])
        if name == "content_block_stop":
            return self._block_stop(int(data["index"]))
        if name == "message_delta":
            return self._message_delta(data)
        if name == "message_stop":
            self.finished = True
            self.terminated = True
            return []
        if name == "error":
            failure = upstream_failure(
                self.provider,
                self.model,
                error_status(str(data["error"].get("type") or "")),
                data,
                {},
                0.0,
            )
            raise from_upstream(failure)
        return []  # ping and event types added after this was written

    def finish(self) -> list[chat_pb2.StreamChatResponse]:
        chunks = super().finish()
        metadata = provider_metadata.to_struct(self._metadata)
        if metadata is not None:
            chunks[-1].provider_metadata.CopyFrom(metadata)
        return chunks

    def _take_usage(self, fields: Mapping[str, Any]) -> None:
        # Counts are cumulative: the latest value of each field wins, never a sum.
        self._usage_fields.update({k: v for k, v in fields.items() if v is not None})
        self.usage = usage_from(self._usage_fields)

    def _block_start(
        self, index: int, block: Mapping[str, Any]
    ) -> list[chat_pb2.StreamChatResponse]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [chat_pb2.StreamChatResponse(text_delta=str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [chat_pb2.StreamChatResponse(reasoning_delta=str(block["thinking"]))]
        if kind == "redacted_thinking":
            return [chat_pb2.StreamChatResponse(reasoning_redacted=str(block["data"]))]
        if kind == "tool_use":
            tool_index = self._tools
            self._tools += 1
            self._tool_of_block[index] = tool_index
            initial = block.get("input")
            arguments = compact_json(initial) if initial else ""
            self._tool_has_arguments[tool_index] = bool(arguments)
            delta = chat_pb2.ToolCallDelta(
                index=tool_index,
                id=str(block["id"]),
                name=str(block["name"]),
                arguments_delta=arguments,
            )
            return [chat_pb2.StreamChatResponse(tool_call_deltas=[delta])]
        return []

    def _block_delta(
        self, index: int, delta: Mapping[str, Any]
    ) -> list[chat_pb2.StreamChatResponse]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [chat_pb2.StreamChatResponse(text_delta=str(delta["text"]))]
        if kind == "thinking_delta":
            return [chat_pb2.StreamChatResponse(reasoning_delta=str(delta["thinking"]))]
        if kind == "signature_delta":
            return [chat_pb2.StreamChatResponse(reasoning_signature=str(delta["signature"]))]
        if kind == "input_json_delta" and index in self._tool_of_block:
            fragment = str(delta["partial_json"])
            if not fragment:  # the first fragment is often ""
                return []
            tool_index = self._tool_of_block[index]
            self._tool_has_arguments[tool_index] = True
            call = chat_pb2.ToolCallDelta(index=tool_index, arguments_delta=fragment)
            return [chat_pb2.StreamChatResponse(tool_call_deltas=[call])]
        return []

    def _block_stop(self, index: int) -> list[chat_pb2.StreamChatResponse]:
        tool_index = self._tool_of_block.get(index)
        if tool_index is None or self._tool_has_arguments[tool_index]:
            return []
        # A call without arguments: "{}", as the whole response would say.
        self._tool_has_arguments[tool_index] = True
        call = chat_pb2.ToolCallDelta(index=tool_index, arguments_delta="{}")
        return [chat_pb2.StreamChatResponse(tool_call_deltas=[call])]

    def _message_delta(self, data: Mapping[str, Any]) -> list[chat_pb2.StreamChatResponse]:
        if data.get("usage"):
            self._take_usage(data["usage"])
        self._metadata.update(provider_metadata.pick(data.get("delta"), _METADATA_KEYS))
        raw = (data.get("delta") or {}).get("stop_reason")
        if not raw or self.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED:
            return []
        self.finish_reason = finish_reason(str(raw))
        return [
            chat_pb2.StreamChatResponse(finish_reason=self.finish_reason, raw_finish_reason=raw)
        ]
