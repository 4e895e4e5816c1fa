"""Anthropic Messages (reference §4): the pure dialect and its factory.

Request: system messages go to the top-level `system`; tool results become `user` turns
of `tool_result` blocks; tool calls become `tool_use` blocks whose `input` is the parsed
arguments object; reasoning goes back as signed `thinking` blocks. Response and stream
events come back as text, tool_call and reasoning parts; usage per reference §8.2.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, route_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument
from service.providers import factory
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser, usage
from service.providers.framing import SseEvent
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.retry_hints import retry_after_seconds, should_retry_header
from service.providers.upstream_errors import UpstreamFailure, from_upstream
from service.validation import IMAGE_MIME_TYPES

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0

_FINISH: dict[str, chat_pb2.FinishReason.ValueType] = {
    "end_turn": chat_pb2.FINISH_REASON_STOP,
    "stop_sequence": chat_pb2.FINISH_REASON_STOP,
    "pause_turn": chat_pb2.FINISH_REASON_STOP,  # incomplete: resend to continue
    "max_tokens": chat_pb2.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": chat_pb2.FINISH_REASON_LENGTH,
    "tool_use": chat_pb2.FINISH_REASON_TOOL_CALLS,
    "refusal": chat_pb2.FINISH_REASON_CONTENT_FILTER,
}

# The HTTP status each error type is sent with (reference §4.5), for errors that
# arrive inside a 200 stream.
_STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_CONTEXT_MESSAGES = ("prompt is too long", "exceed context limit")
_QUOTA_MESSAGES = (
    "reached your specified api usage limits",
    "spend limit",
    "credit balance is too low",
)
_QUOTA_CODES = ("enforced_spend_limit_reached",)
_RATE_LIMIT_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


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
            if part.text:  # Anthropic rejects empty text blocks
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
        elif kind == "reasoning" and part.reasoning.signature:
            # Unsigned reasoning (from another provider) cannot be verified upstream.
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": part.reasoning.text,
                    "signature": part.reasoning.signature,
                }
            )
    return blocks


def _conversation(request: chat_pb2.ChatRequest) -> tuple[str, list[dict[str, Any]]]:
    """The top-level system text and the user/assistant turns."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    previous_tool = False
    for i, message in enumerate(request.messages):
        path = f"messages[{i}]"
        if message.role == content_pb2.ROLE_SYSTEM:
            system.extend(p.text for p in message.parts if p.text)
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
    return out


def _output_format(config: chat_pb2.GenerationConfig) -> dict[str, Any] | None:
    response_format = config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema = json_format.MessageToDict(response_format.json_schema)
        return {"type": "json_schema", "schema": schema}
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_schema", "schema": {"type": "object"}}
    return None


def _error_status(error_type: str) -> int:
    return _STATUS_OF_TYPE.get(error_type, 500)


def _rfc3339_seconds(value: str) -> float | None:
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def rate_limit_reset_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The wait until the exhausted `anthropic-ratelimit-*` limit resets (§9.3 step 4)."""
    waits: list[float] = []
    for kind in _RATE_LIMIT_KINDS:
        if headers.get(f"anthropic-ratelimit-{kind}-remaining", "").strip() != "0":
            continue
        reset = _rfc3339_seconds(headers.get(f"anthropic-ratelimit-{kind}-reset", ""))
        if reset is not None:
            waits.append(max(0.0, reset - now))
    return max(waits) if waits else None


def upstream_failure(
    provider: str,
    model: str,
    status: int,
    envelope: Any,
    headers: Mapping[str, str],
    now: float,
) -> UpstreamFailure:
    """What an error response (or an in-stream `error` event) says, for from_upstream."""
    error_type = message = error_code = request_id = ""
    if isinstance(envelope, dict):
        error = envelope.get("error")
        if isinstance(error, dict):
            error_type = str(error.get("type") or "")
            message = str(error.get("message") or "")
            details = error.get("details")
            if isinstance(details, dict):
                error_code = str(details.get("error_code") or "")
        request_id = str(envelope.get("request_id") or "")
    lowered = message.lower()
    context = status < 500 and any(text in lowered for text in _CONTEXT_MESSAGES)
    quota = (
        status == 402
        or error_type == "billing_error"
        or error_code in _QUOTA_CODES
        or (status < 500 and any(text in lowered for text in _QUOTA_MESSAGES))
    )
    retry_after = retry_after_seconds(headers, now)
    if retry_after is None:
        retry_after = rate_limit_reset_seconds(headers, now)
    return UpstreamFailure(
        provider,
        model,
        status,
        upstream_type=error_type,
        upstream_code=error_code,
        request_id=headers.get("request-id", "") or request_id,
        retry_after=retry_after,
        context_length_exceeded=context,
        quota_exhausted=quota and not context,
        should_retry=should_retry_header(headers),
    )


class AnthropicStreamParser(StreamParser):
    """Messages stream events (reference §4.4) → chunks."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._usage_fields: dict[str, Any] = {}
        self._tool_of_block: dict[int, int] = {}  # content-block index → tool call index
        self._tool_has_arguments: dict[int, bool] = {}
        self._tools = 0

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
                _error_status(str(data["error"].get("type") or "")),
                data,
                {},
                0.0,
            )
            raise from_upstream(failure)
        return []  # ping and event types added after this was written

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
        raw = (data.get("delta") or {}).get("stop_reason")
        if not raw or self.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED:
            return []
        self.finish_reason = finish_reason(str(raw))
        return [
            chat_pb2.StreamChatResponse(finish_reason=self.finish_reason, raw_finish_reason=raw)
        ]


class AnthropicDialect(Dialect):
    kind = "anthropic"
    framing = "sse"
    request_id_header = "request-id"
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False
    )
    default_context_window = 200_000

    def __init__(self, provider: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        super().__init__(provider)
        self.default_max_tokens = default_max_tokens

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        config = request.generation_config
        max_tokens = (
            config.max_output_tokens
            if config.HasField("max_output_tokens")
            else self.default_max_tokens
        )
        system, messages = _conversation(request)
        body: dict[str, Any] = {"model": deployment.upstream_model, "max_tokens": max_tokens}
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
        if config.HasField("reasoning_budget_tokens"):
            budget = config.reasoning_budget_tokens
            if budget >= max_tokens:
                raise invalid_argument(
                    [
                        FieldViolation(
                            "generation_config.reasoning_budget_tokens",
                            f"must be less than the output token limit ({max_tokens})",
                        )
                    ]
                )
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        output_format = _output_format(config)
        if output_format is not None:
            body["output_config"] = {"format": output_format}
        # seed, presence_penalty and frequency_penalty have no Anthropic equivalent.
        if stream:
            body["stream"] = True
        return HttpRequestSpec("POST", "messages", json_body=body)

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        body = json.loads(response.body)
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
        raw = body["stop_reason"]
        if not isinstance(raw, str) or not raw:
            raise ValueError("an Anthropic message without stop_reason")
        return chat_pb2.ChatResponse(
            message=content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=parts),
            finish_reason=finish_reason(raw),
            raw_finish_reason=raw,
            usage=usage_from(body.get("usage") or {}),
        )

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return AnthropicStreamParser(self.provider, deployment.upstream_model)

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        try:
            envelope: Any = json.loads(response.body)
        except ValueError:  # a CDN page (413, 502) or an empty body
            envelope = None
        return from_upstream(
            upstream_failure(
                self.provider,
                deployment.upstream_model,
                response.status,
                envelope,
                response.headers,
                now,
            )
        )


def create_anthropic(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    settings = config.anthropic
    headers: dict[str, str] = {"anthropic-version": settings.version or DEFAULT_VERSION}
    key = factory.api_key(config, environ)
    if key:
        headers["x-api-key"] = key
    if settings.betas:
        headers["anthropic-beta"] = ",".join(settings.betas)
    max_tokens = (
        settings.default_max_tokens
        if settings.HasField("default_max_tokens")
        else DEFAULT_MAX_TOKENS
    )
    dialect = AnthropicDialect(config.name, max_tokens)
    return factory.http_provider(config, dialect, DEFAULT_BASE_URL, headers)
