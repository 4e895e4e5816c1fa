"""Google Gemini API: chat and embedding requests, from the gateway's protos to Gemini JSON.

Reference §5.2 and §5.5. Messages become `contents` (user / model turns; consecutive tool results
share one `user` turn) and `systemInstruction`; generation settings become
`generationConfig`; tools become `functionDeclarations` and `toolConfig`. Every invalid
field is collected before one INVALID_ARGUMENT is raised.

- A Reasoning part with an empty text carries only a `thoughtSignature`; it is attached to
  the part that follows it.
- `reasoning_budget_tokens` also asks for thought summaries (`includeThoughts`), since a
  caller that sets a budget wants to see the reasoning.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.errors import FieldViolation, invalid_argument
from service.providers import model_names, reasoning
from service.providers.gemini_documents import document_part

# batchEmbedContents takes at most this many requests.
MAX_BATCH_EMBED = 100

_TOOL_MODES = {
    content_pb2.TOOL_CHOICE_MODE_AUTO: "AUTO",
    content_pb2.TOOL_CHOICE_MODE_NONE: "NONE",
    content_pb2.TOOL_CHOICE_MODE_REQUIRED: "ANY",
}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.S)


def _plain(value: Any) -> Any:
    """A Struct as plain JSON, with integral numbers written as integers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _plain(json_format.MessageToDict(struct))
    return result


def model_resource(model: str) -> str:
    """The model's resource name, as request bodies name it: `models/...` or
    `tunedModels/...`."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def model_path(model: str) -> str:
    """The model's resource name as a URL path: collection and id, each encoded as one
    segment, so that no model name can reach another path (the registry has already
    refused names outside the Gemini rule of service/providers/model_names.py)."""
    collection, _, model_id = model_resource(model).partition("/")
    return model_names.path(collection, model_id)


class _Contents:
    """Builds `contents` and `systemInstruction` from the messages, collecting every
    violation before raising."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        self.contents: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []
        self.violations: list[FieldViolation] = []
        self._open_tool_turn = False
        self._names = {
            part.tool_call.id: part.tool_call.name
            for message in request.messages
            for part in message.parts
            if part.WhichOneof("kind") == "tool_call"
        }
        for i, message in enumerate(request.messages):
            self._message(message, f"messages[{i}]")

    def _append(self, role: str, parts: list[dict[str, Any]], tool_results: bool) -> None:
        """Adds a turn; tool results right after tool results join their `user` turn."""
        if not parts:
            return
        if tool_results and self._open_tool_turn:
            self.contents[-1]["parts"].extend(parts)
            return
        self.contents.append({"role": role, "parts": parts})
        self._open_tool_turn = tool_results

    def _message(self, message: content_pb2.Message, path: str) -> None:
        role = message.role
        if role == content_pb2.ROLE_SYSTEM:
            self.system.extend({"text": p.text} for p in message.parts if p.text)
            return
        parts: list[dict[str, Any]] = []
        signature = ""
        for j, part in enumerate(message.parts):
            part_path = f"{path}.parts[{j}]"
            kind = part.WhichOneof("kind")
            built: dict[str, Any] | None = None
            if kind == "text":
                built = {"text": part.text}
            elif kind == "image":
                built = self._image(part.image, f"{part_path}.image")
            elif kind == "document":
                built = document_part(part.document, f"{part_path}.document")
            elif kind == "tool_call":
                built = self._tool_call(part.tool_call, f"{part_path}.tool_call")
            elif kind == "tool_result":
                built = self._tool_result(part.tool_result, f"{part_path}.tool_result")
            elif kind == "reasoning":
                if not part.reasoning.text:
                    signature = part.reasoning.signature or signature
                    continue
                built = {"text": part.reasoning.text, "thought": True}
                if part.reasoning.signature:
                    built["thoughtSignature"] = part.reasoning.signature
            if built is None:
                continue
            if signature and "thoughtSignature" not in built:
                built["thoughtSignature"] = signature
            signature = ""
            parts.append(built)
        if signature:
            parts.append({"text": "", "thoughtSignature": signature})
        if role == content_pb2.ROLE_ASSISTANT:
            self._append("model", parts, tool_results=False)
        elif role == content_pb2.ROLE_TOOL:
            self._append("user", parts, tool_results=True)
        else:
            self._append("user", parts, tool_results=False)

    def _image(self, image: content_pb2.Image, path: str) -> dict[str, Any] | None:
        if image.WhichOneof("source") == "data":
            data = base64.b64encode(image.data).decode("ascii")
            return {"inlineData": {"mimeType": image.mime_type, "data": data}}
        url = image.url
        if url.startswith("data:"):
            match = _DATA_URL.match(url)
            if match is None:
                self.violations.append(
                    FieldViolation(f"{path}.url", "must be a base64 data URL with a media type")
                )
                return None
            return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}
        if not image.mime_type:
            self.violations.append(
                FieldViolation(
                    f"{path}.mime_type", "is required for image URLs sent to Gemini (fileData)"
                )
            )
            return None
        return {"fileData": {"mimeType": image.mime_type, "fileUri": url}}

    def _tool_call(self, call: content_pb2.ToolCall, path: str) -> dict[str, Any] | None:
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            self.violations.append(
                FieldViolation(f"{path}.arguments", "must be a JSON object text")
            )
            return None
        return {"functionCall": {"name": call.name, "args": args}}

    def _tool_result(self, result: content_pb2.ToolResult, path: str) -> dict[str, Any] | None:
        name = result.name or self._names.get(result.tool_call_id, "")
        if not name:
            self.violations.append(
                FieldViolation(
                    f"{path}.name",
                    "is required when no earlier tool call has this tool_call_id",
                )
            )
            return None
        try:
            value: Any = json.loads(result.content)
        except ValueError:
            value = result.content
        if result.is_error:
            response: Any = {"error": value}
        elif isinstance(value, dict):
            response = value
        else:
            response = {"output": value}
        return {"functionResponse": {"name": name, "response": response}}


def _generation_config(
    config: chat_pb2.GenerationConfig, model: str, stream: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("max_output_tokens", "maxOutputTokens"),
    ):
        if config.HasField(field):  # type: ignore[arg-type]
            out[name] = getattr(config, field)
    if config.stop_sequences:
        out["stopSequences"] = list(config.stop_sequences)
    for field, name in (
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if config.HasField(field):  # type: ignore[arg-type]
            out[name] = getattr(config, field)
    response_format = config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        out["responseMimeType"] = "application/json"
    elif response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        out["responseMimeType"] = "application/json"
        out["responseJsonSchema"] = _struct(response_format.json_schema)
    thinking = reasoning.gemini_thinking(config, model)
    if thinking is not None:
        out["thinkingConfig"] = thinking
    if config.logprobs:
        out["responseLogprobs"] = True
    if config.HasField("top_logprobs"):
        out["logprobs"] = config.top_logprobs
    if config.HasField("candidate_count") and not stream:
        out["candidateCount"] = config.candidate_count
    return out


def _tools(request: chat_pb2.ChatRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters.fields:
                declaration["parameters"] = _struct(tool.parameters)
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    calling: dict[str, Any] | None = None
    if which == "tool_name":
        calling = {"mode": "ANY", "allowedFunctionNames": [choice.tool_name]}
    elif which == "mode" and choice.mode in _TOOL_MODES:
        calling = {"mode": _TOOL_MODES[choice.mode]}
    if calling is not None:
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def chat_body(
    request: chat_pb2.ChatRequest, model: str = "", stream: bool = False
) -> dict[str, Any]:
    """The `generateContent` / `streamGenerateContent` body for a chat request; raises
    INVALID_ARGUMENT naming every field Gemini cannot take."""
    contents = _Contents(request)
    if contents.violations:
        raise invalid_argument(contents.violations)
    body: dict[str, Any] = {}
    if contents.system:
        body["systemInstruction"] = {"parts": contents.system}
    body["contents"] = contents.contents
    generation = _generation_config(request.generation_config, model, stream)
    if generation:
        body["generationConfig"] = generation
    body.update(_tools(request))
    return body


def embed_body(request: embed_pb2.EmbedRequest, model: str) -> dict[str, Any]:
    """The `embedContent` body for one input, else the `batchEmbedContents` body (each
    request naming `model`); raises INVALID_ARGUMENT beyond MAX_BATCH_EMBED inputs."""

    def one(text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if request.HasField("dimensions"):
            item["outputDimensionality"] = request.dimensions
        return item

    if len(request.inputs) > MAX_BATCH_EMBED:
        raise invalid_argument(
            [
                FieldViolation(
                    "inputs",
                    f"at most {MAX_BATCH_EMBED} for a Gemini model "
                    f"(batchEmbedContents' limit); got {len(request.inputs)}",
                )
            ]
        )
    if len(request.inputs) == 1:
        return one(request.inputs[0])
    resource = model_resource(model)
    return {"requests": [{"model": resource, **one(text)} for text in request.inputs]}


def count_tokens_body(request: chat_pb2.ChatRequest, model: str) -> dict[str, Any]:
    """The Gemini API's `countTokens` body: the whole `generateContentRequest`, so that
    the system instruction and the tools are counted too."""
    return {"generateContentRequest": {"model": model_resource(model), **chat_body(request)}}
