"""Ollama's native API: error bodies and in-stream error lines to GatewayError.

Errors (§6.5): `{"error": "<string>"}` with the HTTP status, mapped by the shared table;
context-length messages → CONTEXT_LENGTH_EXCEEDED. An `{"error": ...}` NDJSON line inside
a 200 stream is mapped from its text: "not found" → MODEL_NOT_FOUND, context-length →
CONTEXT_LENGTH_EXCEEDED, anything else as Ollama's own default status 500.
"""

from __future__ import annotations

import json
import re

from service.errors import GatewayError
from service.providers.http import HttpResponse
from service.providers.retry_hints import (
    retry_after_seconds,
    should_retry_header,
    text_hint_seconds,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream

_CONTEXT_LENGTH = re.compile(
    r"(exceed|longer than|too long|too large)[^.]*context|context[^.]*(exceed|too long)",
    re.IGNORECASE,
)
_MODEL_NOT_FOUND = re.compile(r"\bmodel\b.*\bnot found\b", re.IGNORECASE)


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


def http_error(
    provider: str,
    model: str,
    response: HttpResponse,
    request_id_header: str,
    now: float | None,
) -> GatewayError:
    """An error response (or an error envelope sent with 2xx, as 502); without a clock
    (`now` None) only hints in the text give a retry delay."""
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
            provider=provider,
            model=model,
            http_status=status,
            upstream_message=message,
            request_id=response.headers.get(request_id_header, ""),
            retry_after=retry_after,
            context_length_exceeded=is_context_length_message(message),
            should_retry=should_retry_header(response.headers),
        )
    )


def stream_error(provider: str, model: str, message: str) -> GatewayError:
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
            provider=provider,
            model=model,
            http_status=status,
            upstream_type="stream_error",
            upstream_message=message,
            retry_after=text_hint_seconds(message) if message else None,
            context_length_exceeded=context,
        )
    )
