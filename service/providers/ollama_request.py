"""Ollama's native API: chat and embedding requests, from the gateway's protos to Ollama JSON.

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
  token budget: a set `reasoning_effort` sends `think: "low" | "medium" | "high"`, else a
  set `reasoning_budget_tokens` sends `think: true`.

Embeddings (§6.4) send `input` as a list (and `dimensions` when asked); Ollama's default
`truncate: true` is kept, so over-long inputs are truncated by Ollama, not refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.errors import FieldViolation, invalid_argument, unsupported_capability
from service.providers import reasoning
from service.providers.base import Deployment

_ROLES = {
    content_pb2.ROLE_SYSTEM: "system",
    content_pb2.ROLE_USER: "user",
    content_pb2.ROLE_ASSISTANT: "assistant",
    content_pb2.ROLE_TOOL: "tool",
}
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


def _messages(request: chat_pb2.ChatRequest) -> list[dict[str, Any]]:
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
                image = _image(part.image, f"{path}.image", violations)
                if image is not None:
                    images.append(image)
            elif kind == "tool_call":
                call = _tool_call(part.tool_call, f"{path}.tool_call", violations)
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


def chat_body(
    request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool, keep_alive: str | None
) -> dict[str, Any]:
    """The `api/chat` body for a chat request; `keep_alive` is the provider's setting."""
    body: dict[str, Any] = {
        "model": deployment.upstream_model,
        "messages": _messages(request),
        "stream": stream,
    }
    tools = _tools(request, deployment)
    if tools:
        body["tools"] = tools
    config = request.generation_config
    response_format = config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        body["format"] = "json"
    elif response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        body["format"] = _struct(response_format.json_schema)
    options = _options(config)
    if options:
        body["options"] = options
    effort = reasoning.level(config)
    if effort is not None:
        body["think"] = effort
    elif config.HasField("reasoning_budget_tokens"):
        body["think"] = True
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def embed_body(
    request: embed_pb2.EmbedRequest, model: str, keep_alive: str | None
) -> dict[str, Any]:
    """The `api/embed` body: `input` as a list, `dimensions` when asked."""
    body: dict[str, Any] = {"model": model, "input": list(request.inputs)}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body
