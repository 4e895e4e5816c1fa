"""OpenAI Chat Completions and Embeddings, and every OpenAI-compatible server.

The transforms here are shared: Azure OpenAI (azure.py) and OpenAI-compatible servers
(vLLM, llama.cpp, LM Studio, custom endpoints) change only URLs, auth and a few
request fields, through `OpenAIOptions`.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.errors import GatewayError
from service.providers import factory, logprobs, provider_metadata, reasoning
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser, usage
from service.providers.framing import SseEvent
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.openai_documents import file_part
from service.providers.retry_hints import (
    go_duration_seconds,
    retry_after_seconds,
    should_retry_header,
    text_hint_seconds,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream

OPENAI_BASE_URL = "https://api.openai.com/v1"

FINISH_REASONS: dict[str, chat_pb2.FinishReason.ValueType] = {
    "stop": chat_pb2.FINISH_REASON_STOP,
    "length": chat_pb2.FINISH_REASON_LENGTH,
    "tool_calls": chat_pb2.FINISH_REASON_TOOL_CALLS,
    "function_call": chat_pb2.FINISH_REASON_TOOL_CALLS,
    "content_filter": chat_pb2.FINISH_REASON_CONTENT_FILTER,
}
# vLLM reports failures of generation itself as finish reasons.
_FAILED_FINISH = frozenset({"error", "abort"})
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "exceed_context_size_error",
    "exceeds the available context size",
    "context window",
)
_FILTER_MARKERS = (
    "content_filter",
    "content_policy_violation",
    "responsibleaipolicyviolation",
    "content management policy",
)


@dataclass(frozen=True)
class OpenAIOptions:
    """What differs between OpenAI, Azure and compatible servers on the wire."""

    max_tokens_field: str = "max_completion_tokens"
    send_top_k: bool = False
    stream_usage: bool = True


# --- request -----------------------------------------------------------------------


def _image_url(image: content_pb2.Image) -> str:
    if image.WhichOneof("source") == "url":
        return image.url
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode()}"


def _user_content(message: content_pb2.Message, path: str) -> str | list[dict[str, Any]]:
    parts = list(message.parts)
    if all(p.WhichOneof("kind") == "text" for p in parts):
        return "".join(p.text for p in parts)
    content: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        if part.WhichOneof("kind") == "text":
            content.append({"type": "text", "text": part.text})
        elif part.WhichOneof("kind") == "image":
            content.append({"type": "image_url", "image_url": {"url": _image_url(part.image)}})
        elif part.WhichOneof("kind") == "document":
            content.append(file_part(part.document, f"{path}.parts[{j}].document"))
    return content


def _assistant(message: content_pb2.Message) -> dict[str, Any]:
    text = "".join(p.text for p in message.parts if p.WhichOneof("kind") == "text")
    calls = [
        {
            "id": p.tool_call.id,
            "type": "function",
            "function": {"name": p.tool_call.name, "arguments": p.tool_call.arguments},
        }
        for p in message.parts
        if p.WhichOneof("kind") == "tool_call"
    ]
    entry: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        entry["tool_calls"] = calls
    return entry


def messages_to_wire(messages: list[content_pb2.Message]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role == content_pb2.ROLE_TOOL:
            wire.extend(
                {
                    "role": "tool",
                    "tool_call_id": p.tool_result.tool_call_id,
                    "content": p.tool_result.content,
                }
                for p in message.parts
            )
            continue
        if message.role == content_pb2.ROLE_ASSISTANT:
            entry = _assistant(message)
        elif message.role == content_pb2.ROLE_SYSTEM:
            entry = {"role": "system", "content": "".join(p.text for p in message.parts)}
        else:
            entry = {"role": "user", "content": _user_content(message, f"messages[{i}]")}
        if message.name:
            entry["name"] = message.name
        wire.append(entry)
    return wire


def _schema(struct: Any) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(struct)
    return value


def _tool_choice(choice: content_pb2.ToolChoice) -> Any:
    which = choice.WhichOneof("choice")
    if which == "tool_name":
        return {"type": "function", "function": {"name": choice.tool_name}}
    if which == "mode":
        return {
            content_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
            content_pb2.TOOL_CHOICE_MODE_NONE: "none",
            content_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
        }.get(choice.mode)
    return None


def _response_format(config: chat_pb2.GenerationConfig) -> dict[str, Any] | None:
    fmt = config.response_format
    if fmt.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    if fmt.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema: dict[str, Any] = {"name": fmt.schema_name, "schema": _schema(fmt.json_schema)}
        if fmt.strict:
            schema["strict"] = True
        return {"type": "json_schema", "json_schema": schema}
    return None


def chat_body(
    request: chat_pb2.ChatRequest, model: str, stream: bool, options: OpenAIOptions
) -> dict[str, Any]:
    """The Chat Completions request body (reference §2.2)."""
    body: dict[str, Any] = {"model": model, "messages": messages_to_wire(list(request.messages))}
    config = request.generation_config
    if config.HasField("temperature"):
        body["temperature"] = config.temperature
    if config.HasField("top_p"):
        body["top_p"] = config.top_p
    if config.HasField("top_k") and options.send_top_k:
        body["top_k"] = config.top_k
    if config.HasField("max_output_tokens"):
        body[options.max_tokens_field] = config.max_output_tokens
    if config.HasField("seed"):
        body["seed"] = config.seed
    if config.HasField("presence_penalty"):
        body["presence_penalty"] = config.presence_penalty
    if config.HasField("frequency_penalty"):
        body["frequency_penalty"] = config.frequency_penalty
    if config.stop_sequences:
        body["stop"] = list(config.stop_sequences)
    response_format = _response_format(config)
    if response_format is not None:
        body["response_format"] = response_format
    effort = reasoning.level(config)
    if effort is not None:
        body["reasoning_effort"] = effort
    if config.logprobs:
        body["logprobs"] = True
    if config.HasField("top_logprobs"):
        body["top_logprobs"] = config.top_logprobs
    if config.HasField("candidate_count") and not stream:
        body["n"] = config.candidate_count
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": _schema(tool.parameters)
                    if tool.parameters.fields
                    else {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
        if options.stream_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def embed_body(request: embed_pb2.EmbedRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "input": list(request.inputs),
        "encoding_format": "float",
    }
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    return body


# --- responses ---------------------------------------------------------------------


def usage_from(data: Mapping[str, Any] | None) -> route_pb2.Usage:
    """OpenAI usage → normalized (prompt includes cached; completion includes reasoning)."""
    if not data:
        return usage()
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    return usage(
        input_tokens=int(data.get("prompt_tokens") or 0),
        output_tokens=int(data.get("completion_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        cache_write_input_tokens=int(prompt_details.get("cache_write_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def finish_reason_of(raw: str, provider: str, model: str) -> chat_pb2.FinishReason.ValueType:
    if raw in _FAILED_FINISH:
        raise from_upstream(
            UpstreamFailure(provider, model, 500, upstream_type=f"finish_reason_{raw}")
        )
    return FINISH_REASONS.get(raw, chat_pb2.FINISH_REASON_OTHER)


def _reasoning_text(data: Mapping[str, Any]) -> str:
    # vLLM and llama.cpp: reasoning_content (older) or reasoning (newer).
    value = data.get("reasoning_content") or data.get("reasoning") or ""
    return value if isinstance(value, str) else ""


def tool_call_id() -> str:
    """An id for a tool call a server sent without one (some OpenAI-compatible servers
    do). Random: completion ids may be constant or missing too, and tool results are
    matched by these ids in later turns."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _choice_message(
    choice: Mapping[str, Any],
) -> tuple[content_pb2.Message, str]:
    """The assistant message of one choice, and its refusal text ("" when none)."""
    message = choice["message"]
    out = content_pb2.Message(role=content_pb2.ROLE_ASSISTANT)
    reasoning_text = _reasoning_text(message)
    if reasoning_text:
        out.parts.add(reasoning=content_pb2.Reasoning(text=reasoning_text))
    text = message.get("content")
    if isinstance(text, str) and text:
        out.parts.add(text=text)
    for call in message.get("tool_calls") or []:
        function = call["function"]
        name = str(function["name"])
        arguments = function.get("arguments") or ""
        out.parts.add(
            tool_call=content_pb2.ToolCall(
                id=str(call.get("id") or tool_call_id()),
                name=name,
                arguments=arguments,
            )
        )
    if not out.parts:
        out.parts.add(text="")
    refusal = message.get("refusal")
    return out, refusal if isinstance(refusal, str) else ""


def _finish(raw: str, refused: bool, provider: str, model: str) -> chat_pb2.FinishReason.ValueType:
    """A choice that carries a refusal finished as REFUSAL, whatever its finish_reason."""
    if refused:
        return chat_pb2.FINISH_REASON_REFUSAL
    return finish_reason_of(raw, provider, model)


def parse_chat_body(body: Mapping[str, Any], provider: str, model: str) -> chat_pb2.ChatResponse:
    choices = sorted(body["choices"], key=lambda c: int(c.get("index", 0)))
    choice = choices[0]
    message, refusal = _choice_message(choice)
    raw = choice.get("finish_reason") or ""
    response = chat_pb2.ChatResponse(
        message=message,
        finish_reason=_finish(raw, bool(refusal), provider, model),
        raw_finish_reason=raw,
        usage=usage_from(body.get("usage")),
        refusal=refusal,
        logprobs=logprobs.from_openai(choice.get("logprobs")),
    )
    for index, extra in enumerate(choices[1:], start=1):
        extra_message, extra_refusal = _choice_message(extra)
        extra_raw = extra.get("finish_reason") or ""
        response.candidates.add(
            index=index,
            message=extra_message,
            finish_reason=_finish(extra_raw, bool(extra_refusal), provider, model),
            raw_finish_reason=extra_raw,
            refusal=extra_refusal,
            logprobs=logprobs.from_openai(extra.get("logprobs")),
        )
    metadata = provider_metadata.to_struct(
        {
            **provider_metadata.pick(body, provider_metadata.OPENAI_KEYS),
            **provider_metadata.pick(body, provider_metadata.OPENAI_AZURE_KEYS),
            **provider_metadata.pick(choice, provider_metadata.OPENAI_CHOICE_KEYS),
        }
    )
    if metadata is not None:
        response.provider_metadata.CopyFrom(metadata)
    # The completion's id (`chatcmpl-…`): the route's id when no header names one.
    response.route.upstream_request_id = str(body.get("id") or "")
    return response


def parse_embed_body(body: Mapping[str, Any]) -> embed_pb2.EmbedResponse:
    items = sorted(body["data"], key=lambda item: int(item["index"]))
    embeddings = []
    for item in items:
        vector = item["embedding"]
        if isinstance(vector, str):  # encoding_format=base64: packed little-endian float32
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        embeddings.append(embed_pb2.Embedding(index=int(item["index"]), values=vector))
    tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
    return embed_pb2.EmbedResponse(embeddings=embeddings, usage=usage(input_tokens=tokens))


# --- errors ------------------------------------------------------------------------


def _error_fields(body: Any) -> tuple[str, str, str, int | None]:
    """(type, code, message, numeric code) from any OpenAI-style error body."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", "", None
    error = body.get("error", body if body.get("object") == "error" else None)
    if isinstance(error, str):
        return "", "", error, None
    if not isinstance(error, dict):
        return "", "", "", None
    code = error.get("code")
    numeric = code if isinstance(code, int) else None
    inner = error.get("innererror") or error.get("inner_error") or {}
    inner_code = inner.get("code", "") if isinstance(inner, dict) else ""
    code_text = "" if code is None or isinstance(code, int) else str(code)
    return (
        str(error.get("type") or ""),
        code_text or str(inner_code or ""),
        str(error.get("message") or ""),
        numeric,
    )


def _error_param(body: Any) -> str:
    """The request field an OpenAI-style error names (`error.param`), or ""."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else ""


def _reset_hint(headers: Mapping[str, str]) -> float | None:
    """x-ratelimit-reset-* for whichever budget is exhausted."""
    for kind in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0":
            value = go_duration_seconds(headers.get(f"x-ratelimit-reset-{kind}", ""))
            if value is not None:
                return value
    return None


def failure_from(
    provider: str,
    model: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    request_id_header: str = "x-request-id",
) -> UpstreamFailure:
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None  # an HTML page from a proxy, or plain text
    error_type, code, message, numeric = _error_fields(parsed)
    if status == 502 and numeric is not None and numeric >= 400:
        status = numeric  # an in-stream or 200-wrapped error that names its own status
    lowered = f"{error_type} {code} {message}".lower()
    retry_after = retry_after_seconds(headers, now)
    if retry_after is None:
        retry_after = _reset_hint(headers) if status == 429 else None
    if retry_after is None and status in (429, 503):
        retry_after = text_hint_seconds(message)
    return UpstreamFailure(
        provider=provider,
        model=model,
        http_status=status,
        upstream_type=error_type,
        upstream_code=code,
        upstream_message=message,
        upstream_param=_error_param(parsed),
        request_id=headers.get(request_id_header, ""),
        retry_after=retry_after,
        context_length_exceeded=any(m in lowered for m in _CONTEXT_MARKERS),
        quota_exhausted="insufficient_quota" in lowered,
        content_filtered=status == 400 and any(m in lowered for m in _FILTER_MARKERS),
        should_retry=should_retry_header(headers),
    )


def _stream_error(error: Any, provider: str, model: str) -> GatewayError:
    """An error object sent inside a 200 stream: its status comes from its type or code."""
    error_type, code, message, numeric = _error_fields({"error": error})
    lowered = f"{error_type} {code}".lower()
    status = numeric if numeric and numeric >= 400 else 500
    if "rate_limit" in lowered or error_type in ("requests", "tokens"):
        status = 429
    elif "invalid_request" in lowered:
        status = 400
    return from_upstream(
        UpstreamFailure(
            provider=provider,
            model=model,
            http_status=status,
            upstream_type=error_type,
            upstream_code=code,
            upstream_message=message,
            upstream_param=_error_param({"error": error}),
            retry_after=text_hint_seconds(message) if status == 429 else None,
            context_length_exceeded=any(
                m in f"{lowered} {message.lower()}" for m in _CONTEXT_MARKERS
            ),
            quota_exhausted="insufficient_quota" in lowered,
        )
    )


# --- streaming ---------------------------------------------------------------------


class OpenAIStreamParser(StreamParser):
    """Chat completion chunks (reference §2.4): data-only SSE ending in `[DONE]`."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._tool_index: dict[int, int] = {}  # upstream index → position in this turn
        self._refused = False  # a refusal delta was seen
        self._metadata: dict[str, Any] = {}  # provider_metadata for the final chunk

    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        assert isinstance(event, SseEvent)
        if event.data.strip() == "[DONE]":
            self.finished = True
            self.terminated = True
            return []
        data = json.loads(event.data)
        if not isinstance(data, dict):
            raise TypeError("a stream chunk is not a JSON object")
        if data.get("error") is not None:
            raise _stream_error(data["error"], self.provider, self.model)
        if data.get("usage"):
            self.usage = usage_from(data["usage"])
        self._metadata.update(provider_metadata.pick(data, provider_metadata.OPENAI_KEYS))
        self._metadata.update(provider_metadata.pick(data, provider_metadata.OPENAI_AZURE_KEYS))
        if not self.response_id and data.get("id"):
            self.response_id = str(data["id"])
        chunks = []
        for choice in data.get("choices") or []:
            if int(choice.get("index", 0)) != 0:
                continue
            self._metadata.update(
                provider_metadata.pick(choice, provider_metadata.OPENAI_CHOICE_KEYS)
            )
            chunks.append(self._choice(choice))
        return chunks

    def finish(self) -> list[chat_pb2.StreamChatResponse]:
        chunks = super().finish()
        metadata = provider_metadata.to_struct(self._metadata)
        if metadata is not None:
            chunks[-1].provider_metadata.CopyFrom(metadata)
        return chunks

    def _choice(self, choice: Mapping[str, Any]) -> chat_pb2.StreamChatResponse:
        delta = choice.get("delta") or {}
        chunk = chat_pb2.StreamChatResponse()
        text = delta.get("content")
        if isinstance(text, str):
            chunk.text_delta = text
        reasoning_text = _reasoning_text(delta)
        if reasoning_text:
            chunk.reasoning_delta = reasoning_text
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            chunk.refusal_delta = refusal
            self._refused = True
        chunk.logprobs.extend(logprobs.from_openai(choice.get("logprobs")))
        for call in delta.get("tool_calls") or []:
            upstream_index = int(call.get("index", 0))
            function = call.get("function") or {}
            first = upstream_index not in self._tool_index
            if first:
                self._tool_index[upstream_index] = len(self._tool_index)
            piece = chat_pb2.ToolCallDelta(
                index=self._tool_index[upstream_index],
                arguments_delta=function.get("arguments") or "",
            )
            if first:
                piece.name = str(function.get("name") or "")
                piece.id = str(call.get("id") or tool_call_id())
            chunk.tool_call_deltas.append(piece)
        raw = choice.get("finish_reason")
        if raw:
            if self.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED:
                raise ValueError("a second finish_reason in one stream")
            self.finish_reason = _finish(str(raw), self._refused, self.provider, self.model)
            chunk.finish_reason = self.finish_reason
            chunk.raw_finish_reason = str(raw)
        return chunk


# --- the dialect -------------------------------------------------------------------


class OpenAIDialect(Dialect):
    kind = "openai"
    default_capabilities = Capabilities(vision=True, documents=True)
    default_context_window = 128_000

    def __init__(self, provider: str, options: OpenAIOptions | None = None) -> None:
        super().__init__(provider)
        self.options = options or OpenAIOptions()

    def chat_path(self, deployment: Deployment) -> str:
        return "chat/completions"

    def embeddings_path(self, deployment: Deployment) -> str:
        return "embeddings"

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        body = chat_body(request, deployment.upstream_model, stream, self.options)
        return HttpRequestSpec("POST", self.chat_path(deployment), body)

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        return parse_chat_body(json.loads(response.body), self.provider, deployment.upstream_model)

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return OpenAIStreamParser(self.provider, deployment.upstream_model)

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        return from_upstream(
            failure_from(
                self.provider,
                deployment.upstream_model,
                response.status,
                response.headers,
                response.body,
                now,
                self.request_id_header,
            )
        )

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        return HttpRequestSpec(
            "POST", self.embeddings_path(deployment), embed_body(request, deployment.upstream_model)
        )

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        return parse_embed_body(json.loads(response.body))

    def models_request(self) -> HttpRequestSpec | None:
        return HttpRequestSpec("GET", "models")

    def parse_models(self, response: HttpResponse) -> list[str]:
        """`GET /v1/models`: {"object": "list", "data": [{"id": ..., "object": "model"}]}."""
        return [str(item["id"]) for item in json.loads(response.body)["data"]]


class CompatibleDialect(OpenAIDialect):
    kind = "openai_compatible"
    # Local models are often text-only: vision is opted into per model alias.
    default_capabilities = Capabilities(vision=False)
    default_context_window = 0  # whatever the server was started with


def create_openai(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    headers = {"authorization": f"Bearer {factory.api_key(config, environ)}"}
    if config.openai.organization:
        headers["openai-organization"] = config.openai.organization
    if config.openai.project:
        headers["openai-project"] = config.openai.project
    return factory.http_provider(config, OpenAIDialect(config.name), OPENAI_BASE_URL, headers)


def create_compatible(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    settings = config.openai_compatible
    key = factory.api_key(config, environ)
    headers: dict[str, str] = {}
    if key and settings.auth_scheme in (
        config_pb2.AUTH_SCHEME_UNSPECIFIED,
        config_pb2.AUTH_SCHEME_BEARER,
    ):
        headers["authorization"] = f"Bearer {key}"
    elif key and settings.auth_scheme == config_pb2.AUTH_SCHEME_HEADER:
        headers[settings.auth_header.lower()] = key
    options = OpenAIOptions(
        # max_tokens is what llama.cpp, LM Studio and older vLLM understand.
        max_tokens_field="max_tokens",
        send_top_k=True,
        stream_usage=settings.stream_usage if settings.HasField("stream_usage") else True,
    )
    dialect = CompatibleDialect(config.name, options)
    return factory.http_provider(config, dialect, config.base_url, headers)
