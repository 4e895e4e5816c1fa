"""ChatRequest.provider_options: provider fields the contract does not model, merged
into the upstream body. Pure.

Only aliases configured with `allow_provider_options` take them (routing checks that).
They add to the body and never replace: a key the gateway already sends (at any depth
of nested objects, e.g. Gemini's `generationConfig.temperature`) is refused, and so is
every key that carries the model, the conversation, the system prompt, the tools, the
stream flag or credentials, whether the gateway sends it for this request or not. Both
refusals are INVALID_ARGUMENT naming `provider_options.<key path>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument

_OPENAI = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "stream",
        "stream_options",
    }
)

# Keys that provider_options may never set, per provider kind (top level of the body).
PROTECTED: Mapping[str, frozenset[str]] = {
    "openai": _OPENAI,
    "azure_openai": _OPENAI,
    "openai_compatible": _OPENAI,
    "anthropic": frozenset({"model", "messages", "system", "tools", "tool_choice", "stream"}),
    "gemini": frozenset(
        {
            "model",
            "contents",
            "systemInstruction",
            "system_instruction",
            "tools",
            "toolConfig",
            "tool_config",
        }
    ),
    "ollama": frozenset({"model", "messages", "tools", "stream"}),
}
# Never from a caller, for any kind: the gateway's credentials.
_CREDENTIALS = frozenset({"api_key", "apiKey", "key", "authorization", "api-key"})


def protected_key(options: struct_pb2.Struct, kind: str) -> str | None:
    """The first top-level key of `options` that no caller may set for `kind`."""
    protected = PROTECTED.get(kind, frozenset()) | _CREDENTIALS
    return next((key for key in sorted(options.fields) if key in protected), None)


def refused(key_path: str, why: str) -> GatewayError:
    return invalid_argument([FieldViolation(f"provider_options.{key_path}", why)])


def check(options: struct_pb2.Struct, kind: str) -> None:
    """INVALID_ARGUMENT naming the key when `options` tries to set a protected one."""
    key = protected_key(options, kind)
    if key is not None:
        raise refused(key, "is set by the gateway and cannot be given in provider_options")


def merged(body: Mapping[str, Any], options: struct_pb2.Struct) -> dict[str, Any]:
    """`body` with `options` added; objects merge key by key, any other key the body
    already has is refused."""
    extra: dict[str, Any] = json_format.MessageToDict(options)
    return _merge(dict(body), extra, "")


def _merge(body: dict[str, Any], extra: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    for key, value in extra.items():
        path = f"{prefix}{key}"
        if key not in body:
            body[key] = value
        elif isinstance(body[key], dict) and isinstance(value, dict):
            body[key] = _merge(dict(body[key]), value, f"{path}.")
        else:
            raise refused(path, "is already set from the request's own fields")
    return body


def keys(options: struct_pb2.Struct) -> list[str]:
    """The top-level keys, sorted: what the audit records (never the values)."""
    return sorted(options.fields)
