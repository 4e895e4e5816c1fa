"""Anthropic prompt caching: the gateway's cache breakpoints as `cache_control` blocks.

Reference §4.2. A breakpoint (`cache_control` on a message, a part or a tool) becomes
`{"type": "ephemeral"}` on the content block, system block or tool it marks, with
`"ttl": "5m"` or `"1h"` when the caller chose one. Anthropic takes at most
MAX_BREAKPOINTS in one request; more are refused before anything is sent, naming the
first breakpoint over the limit. Pure.
"""

from __future__ import annotations

from typing import Any

from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import FieldViolation, invalid_argument

MAX_BREAKPOINTS = 4
_TTL = {
    content_pb2.CACHE_TTL_FIVE_MINUTES: "5m",
    content_pb2.CACHE_TTL_ONE_HOUR: "1h",
}


def cache_control(control: content_pb2.CacheControl) -> dict[str, Any]:
    """The `cache_control` object for one breakpoint."""
    out: dict[str, Any] = {"type": "ephemeral"}
    ttl = _TTL.get(control.ttl)
    if ttl is not None:
        out["ttl"] = ttl
    return out


def breakpoint_paths(request: chat_pb2.ChatRequest) -> list[str]:
    """The field path of every breakpoint, in the order Anthropic reads the prompt:
    tools, then system and messages."""
    paths = [
        f"tools[{i}].cache_control"
        for i, tool in enumerate(request.tools)
        if tool.HasField("cache_control")
    ]
    for i, message in enumerate(request.messages):
        paths.extend(
            f"messages[{i}].parts[{j}].cache_control"
            for j, part in enumerate(message.parts)
            if part.HasField("cache_control")
        )
        if message.HasField("cache_control"):
            paths.append(f"messages[{i}].cache_control")
    return paths


def check_breakpoints(request: chat_pb2.ChatRequest) -> None:
    """Raises INVALID_ARGUMENT when the request has more breakpoints than Anthropic takes."""
    paths = breakpoint_paths(request)
    if len(paths) > MAX_BREAKPOINTS:
        raise invalid_argument(
            [
                FieldViolation(
                    paths[MAX_BREAKPOINTS],
                    f"at most {MAX_BREAKPOINTS} cache breakpoints in one request for Anthropic"
                    f" models (messages, parts and tools together); got {len(paths)}",
                )
            ]
        )


def mark(block: dict[str, Any], control: content_pb2.CacheControl) -> None:
    """Sets the breakpoint on a content block, system block or tool definition."""
    block["cache_control"] = cache_control(control)


def system_blocks(messages: list[content_pb2.Message]) -> list[dict[str, Any]]:
    """The system messages as text blocks, with their breakpoints (used when any system
    message or part carries one; otherwise the system prompt stays one string)."""
    blocks: list[dict[str, Any]] = []
    for message in messages:
        own: list[dict[str, Any]] = []
        for part in message.parts:
            if not part.text:
                continue
            block: dict[str, Any] = {"type": "text", "text": part.text}
            if part.HasField("cache_control"):
                mark(block, part.cache_control)
            own.append(block)
        if own and message.HasField("cache_control"):
            mark(own[-1], message.cache_control)
        blocks.extend(own)
    return blocks


def has_breakpoint(message: content_pb2.Message) -> bool:
    return message.HasField("cache_control") or any(
        part.HasField("cache_control") for part in message.parts
    )
