"""Ollama's native API (reference §6): `POST api/chat` and `POST api/embed`, NDJSON streams.

Request mapping (§6.2):
- System, user, assistant and tool turns become `system`/`user`/`assistant`/`tool`
  messages; text parts are joined with "\\n" into `content`.
- Images travel as raw base64 strings in the message's `images` list. Inline bytes are
  encoded; a `data:image/...;base64,` URL is unwrapped. Ollama cannot fetch an http(s)
  URL, so such a part is refused with INVALID_ARGUMENT naming
  `messages[i].parts[j].image.url` before any upstream call.
- Assistant tool calls are sent with `function.arguments` as a JSON *object* (the
  proto's JSON text is parsed; text that is not a JSON object is INVALID_ARGUMENT naming
  `messages[i].parts[j].tool_call.arguments`). Reasoning parts go back as `thinking`.
- Every tool result becomes its own `tool` message with `tool_call_id` and, when known
  (from the result or from the earlier call with that id), `tool_name`. Ollama has no
  error flag for tool results: `is_error` is not sent, `content` is sent as is.
- Tool choice: Ollama has no tool_choice. UNSPECIFIED and AUTO send the tools and let
  the model decide; NONE sends no tools. REQUIRED and a named tool cannot be enforced,
  so they are refused with INVALID_ARGUMENT (reason CAPABILITY_UNSUPPORTED) naming
  `tool_choice.mode` or `tool_choice.tool_name` rather than silently not honoured.
- `format` is "json" for JSON_OBJECT and the schema object for JSON_SCHEMA. `options`
  carries temperature, top_p, top_k, num_predict (max_output_tokens), stop, seed and
  the penalties. `keep_alive` comes from the provider's config. Ollama has no reasoning
  token budget: a set `reasoning_budget_tokens` sends `think: true`.

Response mapping (§6.3, §8): `message.thinking` → reasoning, `message.content` → text,
`message.tool_calls` → tool calls with the arguments object as compact JSON text and,
when Ollama sends no id, an id derived from the response's `created_at`, model and the
call's position in the turn. `done_reason` stop → STOP (TOOL_CALLS when the turn had
tool calls), length → LENGTH, anything else (load, unload, absent) → OTHER, raw value
kept. Usage: `prompt_eval_count` input (it already includes the KV-cached prefix),
`eval_count` output; absent counts are 0.

Errors (§6.5): `{"error": "<string>"}` with the HTTP status, mapped by the shared table;
context-length messages → CONTEXT_LENGTH_EXCEEDED. An `{"error": ...}` NDJSON line inside
a 200 stream is mapped from its text: "not found" → MODEL_NOT_FOUND, context-length →
CONTEXT_LENGTH_EXCEEDED, anything else as Ollama's own default status 500.

Embeddings (§6.4) send `input` as a list (and `dimensions` when asked); Ollama's default
`truncate: true` is kept, so over-long inputs are truncated by Ollama, not refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument, unsupported_capability
from service.providers import factory
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser, usage
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.retry_hints import (
    retry_after_seconds,
    should_retry_header,
    text_hint_seconds,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream

DEFAULT_BASE_URL = "http://localhost:11434"
CHAT_PATH = "api/chat"
EMBED_PATH = "api/embed"

_ROLES = {
    content_pb2.ROLE_SYSTEM: "system",
    content_pb2.ROLE_USER: "user",
    content_pb2.ROLE_ASSISTANT: "assistant",
    content_pb2.ROLE_TOOL: "tool",
}
_CONTEXT_LENGTH = re.compile(
    r"(exceed|longer than|too long|too large)[^.]*context|context[^.]*(exceed|too long)",
    re.IGNORECASE,
)
_MODEL_NOT_FOUND = re.compile(r"\bmodel\b.*\bnot found\b", re.IGNORECASE)
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)$", re.DOTALL)


def go_duration(duration: duration_pb2.Duration) -> str:
    """A Duration as a Go duration string ("300s", "1.5s", "-1s"), which keep_alive takes."""
    negative = duration.seconds < 0 or duration.nanos < 0
    seconds, nanos = abs(duration.seconds), abs(duration.nanos)
    text = str(seconds) if not nanos else f"{seconds}.{nanos:09d}".rstrip("0")
    return f"{'-' if negative else ''}{text}s"


def _plain(value: Any) -> Any:
    """JSON from a Struct with whole numbers as integers (Struct keeps every number as a
    double, and schemas read better with `"minimum": 1` than `1.0`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    converted: dict[str, Any] = _plain(json_format.MessageToDict(struct))
    return converted


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


def _error_text(body: bytes) -> str:
    """The message of an Ollama error body, or "" when the body is not one."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])  # an OpenAI-style envelope from a proxy
    return ""


def is_context_length_message(message: str) -> bool:
    return bool(_CONTEXT_LENGTH.search(message))


class OllamaStreamParser(StreamParser):
    """One NDJSON ChatResponse object per event; the `done: true` object ends the turn."""

    def __init__(self, dialect: OllamaDialect, deployment: Deployment) -> None:
        super().__init__(dialect.provider, deployment.upstream_model)
        self._dialect = dialect
        self._calls = 0

    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        if not isinstance(event, dict):
            raise TypeError("a stream line is not a JSON object")
        if "error" in event:
            error = event["error"]
            raise self._dialect.stream_error(self.model, error if isinstance(error, str) else "")
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


class OllamaDialect(Dialect):
    kind = "ollama"
    framing = "ndjson"
    request_id_header = "x-request-id"
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False
    )

    def __init__(self, provider: str, keep_alive: str | None = None) -> None:
        super().__init__(provider)
        self.keep_alive = keep_alive

    # Requests ------------------------------------------------------------------------

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        body: dict[str, Any] = {
            "model": deployment.upstream_model,
            "messages": self._messages(request),
            "stream": stream,
        }
        tools = self._tools(request, deployment)
        if tools:
            body["tools"] = tools
        config = request.generation_config
        response_format = config.response_format
        if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
            body["format"] = "json"
        elif response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
            body["format"] = _struct(response_format.json_schema)
        options = self._options(config)
        if options:
            body["options"] = options
        if config.HasField("reasoning_budget_tokens"):
            body["think"] = True
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return HttpRequestSpec("POST", CHAT_PATH, json_body=body)

    @staticmethod
    def _options(config: chat_pb2.GenerationConfig) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for field, name in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("max_output_tokens", "num_predict"),
            ("seed", "seed"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ):
            if config.HasField(field):  # type: ignore[arg-type]
                options[name] = getattr(config, field)
        if config.stop_sequences:
            options["stop"] = list(config.stop_sequences)
        return options

    @staticmethod
    def _tools(request: chat_pb2.ChatRequest, deployment: Deployment) -> list[dict[str, Any]]:
        choice = request.tool_choice
        which = choice.WhichOneof("choice")
        if which == "mode" and choice.mode == content_pb2.TOOL_CHOICE_MODE_NONE:
            return []
        if which == "mode" and choice.mode == content_pb2.TOOL_CHOICE_MODE_REQUIRED:
            raise unsupported_capability("tool_choice.mode", deployment.alias, "required tool use")
        if which == "tool_name":
            raise unsupported_capability(
                "tool_choice.tool_name", deployment.alias, "forcing a named tool"
            )
        tools = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description:
                function["description"] = tool.description
            function["parameters"] = (
                _struct(tool.parameters)
                if tool.parameters.fields
                else {"type": "object", "properties": {}}
            )
            tools.append({"type": "function", "function": function})
        return tools

    def _messages(self, request: chat_pb2.ChatRequest) -> list[dict[str, Any]]:
        names = {
            part.tool_call.id: part.tool_call.name
            for message in request.messages
            for part in message.parts
            if part.WhichOneof("kind") == "tool_call"
        }
        violations: list[FieldViolation] = []
        out: list[dict[str, Any]] = []
        for i, message in enumerate(request.messages):
            role = _ROLES[message.role]
            texts: list[str] = []
            thinking: list[str] = []
            images: list[str] = []
            calls: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            for j, part in enumerate(message.parts):
                path = f"messages[{i}].parts[{j}]"
                kind = part.WhichOneof("kind")
                if kind == "text":
                    texts.append(part.text)
                elif kind == "reasoning":
                    thinking.append(part.reasoning.text)
                elif kind == "image":
                    image = self._image(part.image, f"{path}.image", violations)
                    if image is not None:
                        images.append(image)
                elif kind == "tool_call":
                    call = self._tool_call(part.tool_call, f"{path}.tool_call", violations)
                    if call is not None:
                        calls.append(call)
                elif kind == "tool_result":
                    result = part.tool_result
                    entry: dict[str, Any] = {"role": "tool", "content": result.content}
                    tool_name = result.name or names.get(result.tool_call_id, "")
                    if tool_name:
                        entry["tool_name"] = tool_name
                    entry["tool_call_id"] = result.tool_call_id
                    results.append(entry)
            if texts or images or calls or thinking or not results:
                entry = {"role": role, "content": "\n".join(texts)}
                if images:
                    entry["images"] = images
                if thinking:
                    entry["thinking"] = "".join(thinking)
                if calls:
                    entry["tool_calls"] = calls
                out.append(entry)
            out.extend(results)
        if violations:
            raise invalid_argument(violations)
        return out

    @staticmethod
    def _image(image: content_pb2.Image, path: str, violations: list[FieldViolation]) -> str | None:
        if image.WhichOneof("source") == "data":
            return base64.b64encode(image.data).decode("ascii")
        match = _DATA_URL.match(image.url)
        if match is None:
            violations.append(
                FieldViolation(
                    f"{path}.url",
                    "Ollama cannot fetch image URLs; send the image bytes in data",
                )
            )
            return None
        data = match.group("data")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            violations.append(FieldViolation(f"{path}.url", "the data URL is not valid base64"))
            return None
        return data

    @staticmethod
    def _tool_call(
        call: content_pb2.ToolCall, path: str, violations: list[FieldViolation]
    ) -> dict[str, Any] | None:
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            violations.append(
                FieldViolation(
                    f"{path}.arguments", "must be a JSON object: Ollama takes arguments as one"
                )
            )
            return None
        return {"id": call.id, "function": {"name": call.name, "arguments": arguments}}

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        body: dict[str, Any] = {"model": deployment.upstream_model, "input": list(request.inputs)}
        if request.HasField("dimensions"):
            body["dimensions"] = request.dimensions
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return HttpRequestSpec("POST", EMBED_PATH, json_body=body)

    # Responses -----------------------------------------------------------------------

    def _body(self, response: HttpResponse, deployment: Deployment) -> dict[str, Any]:
        data = json.loads(response.body.decode("utf-8"))
        if not isinstance(data, dict):
            raise TypeError("the response is not a JSON object")
        if "error" in data:
            # An error envelope with a 2xx status: no clock here, so only text hints.
            raise self._http_error(
                HttpResponse(502, response.headers, response.body), deployment, None
            )
        return data

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        data = self._body(response, deployment)
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
                    id=upstream_id or call_id(created_at, deployment.upstream_model, position),
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

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return OllamaStreamParser(self, deployment)

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        data = self._body(response, deployment)
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

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        return self._http_error(response, deployment, now)

    def _http_error(
        self, response: HttpResponse, deployment: Deployment, now: float | None
    ) -> GatewayError:
        message = _error_text(response.body)
        status = response.status
        if status == 502 and _MODEL_NOT_FOUND.search(message):
            # An Ollama envelope sent with 200 where a stream was expected (the framework
            # reports those as 502): the text is all there is to go on.
            status = 404
        retry_after = None if now is None else retry_after_seconds(response.headers, now)
        if retry_after is None and message:
            retry_after = text_hint_seconds(message)
        return from_upstream(
            UpstreamFailure(
                provider=self.provider,
                model=deployment.upstream_model,
                http_status=status,
                request_id=response.headers.get(self.request_id_header, ""),
                retry_after=retry_after,
                context_length_exceeded=is_context_length_message(message),
                should_retry=should_retry_header(response.headers),
            )
        )

    def stream_error(self, model: str, message: str) -> GatewayError:
        """An `{"error": "..."}` line inside a 200 stream, classified by its text."""
        context = is_context_length_message(message)
        if context:
            status = 400
        elif "not found" in message.lower():
            status = 404
        else:
            status = 500  # what Ollama itself answers when no bytes were sent yet
        return from_upstream(
            UpstreamFailure(
                provider=self.provider,
                model=model,
                http_status=status,
                upstream_type="stream_error",
                retry_after=text_hint_seconds(message) if message else None,
                context_length_exceeded=context,
            )
        )


def create_ollama(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    """Ollama needs no key locally; with api_key_env (ollama.com, or an auth proxy in
    front of a server) the key is sent as `Authorization: Bearer`."""
    key = factory.api_key(config, environ)
    headers = {"Authorization": f"Bearer {key}"} if config.api_key_env and key else {}
    settings = config.ollama
    keep_alive = go_duration(settings.keep_alive) if settings.HasField("keep_alive") else None
    dialect = OllamaDialect(config.name, keep_alive=keep_alive)
    return factory.http_provider(config, dialect, DEFAULT_BASE_URL, headers)
