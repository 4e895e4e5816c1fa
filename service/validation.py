"""Checks requests field by field before anything else runs. Pure.

Returns every violation at once (google.rpc.BadRequest), with field paths written
as in the proto (`messages[0].parts[1].image.mime_type`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.document_checks import check_document
from service.errors import FieldViolation, invalid_argument, printable
from service.schema_check import schema_problem

# The providers' common rule for tool and schema names. Matched with fullmatch: "$"
# would let a trailing newline through.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_STOP_SEQUENCES = 16
MAX_LABELS = 16
MAX_EMBED_INPUTS = 2048

# Which part kinds each role may carry.
_ALLOWED_PARTS: dict[int, frozenset[str]] = {
    content_pb2.ROLE_SYSTEM: frozenset({"text"}),
    content_pb2.ROLE_USER: frozenset({"text", "image", "document"}),
    content_pb2.ROLE_ASSISTANT: frozenset({"text", "tool_call", "reasoning"}),
    content_pb2.ROLE_TOOL: frozenset({"tool_result"}),
}


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items)


def validate_chat(request: chat_pb2.ChatRequest) -> None:
    out = _Violations()
    if not request.model:
        out.add("model", "is required: a model alias from ListModels")
    if not request.messages:
        out.add("messages", "at least one message is required")
    for i, message in enumerate(request.messages):
        _check_message(message, f"messages[{i}]", out)
    _check_generation(request.generation_config, "generation_config", out)
    _check_tools(request, out)
    _check_tool_results(request, out)
    _check_labels(request.labels, out)
    out.raise_if_any()


def validate_embed(request: embed_pb2.EmbedRequest) -> None:
    out = _Violations()
    if not request.model:
        out.add("model", "is required: a model alias from ListModels")
    if not request.inputs:
        out.add("inputs", "at least one input is required")
    if len(request.inputs) > MAX_EMBED_INPUTS:
        out.add("inputs", f"at most {MAX_EMBED_INPUTS} inputs per call")
    for i, text in enumerate(request.inputs):
        if not text:
            out.add(f"inputs[{i}]", "must not be empty")
    if request.HasField("dimensions") and request.dimensions < 1:
        out.add("dimensions", "must be at least 1")
    _check_labels(request.labels, out)
    out.raise_if_any()


def _check_message(message: content_pb2.Message, path: str, out: _Violations) -> None:
    allowed = _ALLOWED_PARTS.get(message.role)
    if allowed is None:
        out.add(f"{path}.role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
    if not message.parts:
        out.add(f"{path}.parts", "at least one part is required")
    for j, part in enumerate(message.parts):
        part_path = f"{path}.parts[{j}]"
        kind = part.WhichOneof("kind")
        if kind is None:
            out.add(part_path, "set one of text, image, tool_call, tool_result, reasoning")
            continue
        if allowed is not None and kind not in allowed:
            role = content_pb2.Role.Name(message.role)
            out.add(f"{part_path}.{kind}", f"is not allowed in a {role} message")
        if kind == "image":
            _check_image(part.image, f"{part_path}.image", out)
        elif kind == "document":
            check_document(part.document, f"{part_path}.document", out.add)
        elif kind == "tool_call":
            _check_tool_call(part.tool_call, f"{part_path}.tool_call", out)
        elif kind == "tool_result" and not part.tool_result.tool_call_id:
            out.add(f"{part_path}.tool_result.tool_call_id", "is required")


def _check_image(image: content_pb2.Image, path: str, out: _Violations) -> None:
    source = image.WhichOneof("source")
    if source is None:
        out.add(path, "set data or url")
    elif source == "data":
        if not image.data:
            out.add(f"{path}.data", "must not be empty")
        if image.mime_type not in IMAGE_MIME_TYPES:
            out.add(f"{path}.mime_type", f"must be one of {', '.join(sorted(IMAGE_MIME_TYPES))}")
    elif not image.url.startswith(("https://", "http://", "data:image/")):
        out.add(f"{path}.url", "must be an http(s) URL or a data:image/ URL")
    if source == "url" and image.mime_type and image.mime_type not in IMAGE_MIME_TYPES:
        out.add(f"{path}.mime_type", f"must be one of {', '.join(sorted(IMAGE_MIME_TYPES))}")


def _check_tool_call(call: content_pb2.ToolCall, path: str, out: _Violations) -> None:
    if not call.id:
        out.add(f"{path}.id", "is required")
    if not _TOOL_NAME.fullmatch(call.name):
        out.add(f"{path}.name", "must be 1 to 64 letters, digits, '_' or '-'")


def _in_range(
    config: chat_pb2.GenerationConfig,
    field: str,
    path: str,
    out: _Violations,
    ok: Callable[[float], bool],
    rule: str,
) -> None:
    if config.HasField(field):  # type: ignore[arg-type]
        value = float(getattr(config, field))
        if math.isnan(value) or not ok(value):
            out.add(f"{path}.{field}", rule)


def _check_generation(config: chat_pb2.GenerationConfig, path: str, out: _Violations) -> None:
    _in_range(config, "temperature", path, out, lambda v: 0 <= v <= 2, "must be 0 to 2")
    _in_range(config, "top_p", path, out, lambda v: 0 < v <= 1, "must be above 0 and at most 1")
    _in_range(config, "top_k", path, out, lambda v: v >= 1, "must be at least 1")
    _in_range(config, "max_output_tokens", path, out, lambda v: v >= 1, "must be at least 1")
    _in_range(config, "reasoning_budget_tokens", path, out, lambda v: v >= 1, "must be at least 1")
    for name in ("presence_penalty", "frequency_penalty"):
        _in_range(config, name, path, out, lambda v: -2 <= v <= 2, "must be -2 to 2")
    _in_range(config, "top_logprobs", path, out, lambda v: 0 <= v <= 20, "must be 0 to 20")
    if config.HasField("top_logprobs") and not config.logprobs:
        out.add(f"{path}.top_logprobs", "needs logprobs: true")
    _in_range(config, "candidate_count", path, out, lambda v: 1 <= v <= 8, "must be 1 to 8")
    if config.reasoning_effort not in chat_pb2.ReasoningEffort.values():
        out.add(f"{path}.reasoning_effort", "is not a known reasoning effort")
    if len(config.stop_sequences) > MAX_STOP_SEQUENCES:
        out.add(f"{path}.stop_sequences", f"at most {MAX_STOP_SEQUENCES} are allowed")
    for k, stop in enumerate(config.stop_sequences):
        if not stop:
            out.add(f"{path}.stop_sequences[{k}]", "must not be empty")
    response_format = config.response_format
    if response_format.type not in chat_pb2.ResponseFormatType.values():
        out.add(f"{path}.response_format.type", "is not a known response format")
    if response_format.HasField("json_schema"):
        _check_schema(response_format.json_schema, f"{path}.response_format.json_schema", out)
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        if not response_format.json_schema.fields:
            out.add(f"{path}.response_format.json_schema", "is required with JSON_SCHEMA")
        if not _TOOL_NAME.fullmatch(response_format.schema_name):
            out.add(
                f"{path}.response_format.schema_name",
                "is required with JSON_SCHEMA: 1 to 64 letters, digits, '_' or '-'",
            )


def _check_schema(schema: struct_pb2.Struct, path: str, out: _Violations) -> None:
    problem = schema_problem(schema)
    if problem is not None:
        out.add(path, problem)


def _check_tools(request: chat_pb2.ChatRequest, out: _Violations) -> None:
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not _TOOL_NAME.fullmatch(tool.name):
            out.add(f"tools[{i}].name", "must be 1 to 64 letters, digits, '_' or '-'")
        elif tool.name in names:
            out.add(f"tools[{i}].name", f'"{tool.name}" is given twice')
        names.add(tool.name)
        if tool.HasField("parameters"):
            _check_schema(tool.parameters, f"tools[{i}].parameters", out)
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "tool_name" and choice.tool_name not in names:
        out.add("tool_choice.tool_name", "must name one of the tools")
    if which == "mode":
        if choice.mode not in content_pb2.ToolChoiceMode.values():
            out.add("tool_choice.mode", "is not a known tool choice mode")
        elif choice.mode == content_pb2.TOOL_CHOICE_MODE_REQUIRED and not request.tools:
            out.add("tool_choice.mode", "REQUIRED needs at least one tool")


def _check_tool_results(request: chat_pb2.ChatRequest, out: _Violations) -> None:
    """Every tool result answers a tool call made earlier in the conversation."""
    called: set[str] = set()
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("kind")
            if kind == "tool_call":
                called.add(part.tool_call.id)
            elif kind == "tool_result" and part.tool_result.tool_call_id not in called | {""}:
                # An empty id is reported by _check_message already.
                out.add(
                    f"messages[{i}].parts[{j}].tool_result.tool_call_id",
                    "does not match any earlier tool call",
                )


def _check_labels(labels: Mapping[str, str], out: _Violations) -> None:
    if len(labels) > MAX_LABELS:
        out.add("labels", f"at most {MAX_LABELS} labels are allowed")
    for key, value in labels.items():
        if not key or len(key) > 63:
            out.add(f"labels[{printable(key, 64)!r}]", "keys must be 1 to 63 characters")
        if len(value) > 256:
            out.add(f"labels[{printable(key, 64)!r}]", "values must be at most 256 characters")
