"""The provider's explanation of a refused request: sanitized, capped, and passed on only
for the caller's own mistakes, by every provider kind's error mapping."""

from __future__ import annotations

import json

import grpc
import pytest

from service.providers.anthropic_errors import upstream_failure as anthropic_failure
from service.providers.gemini_errors import upstream_error as gemini_error
from service.providers.http import HttpResponse
from service.providers.ollama_errors import http_error as ollama_error
from service.providers.openai import failure_from as openai_failure
from service.providers.upstream_errors import UpstreamFailure, from_upstream
from service.providers.upstream_explain import MAX_EXPLANATION_CHARS, explanation


def test_explanation_masks_credentials_and_key_fragments() -> None:
    said = explanation(
        "bad key sk-proj-abcdefghijklmnop, fragment sk-abc1****wxyz,\n"
        "header Authorization: Bearer abcdefghijklmnopqrstuvwxyz and AIzaSyA1234567890abcdefghijk"
    )
    assert "abcdefghijklmnop" not in said
    assert "****" not in said and "wxyz" not in said
    assert "AIzaSy" not in said
    assert "\n" not in said
    assert said.count("[redacted]") >= 3


def test_explanation_is_capped() -> None:
    said = explanation("word " * 400)
    assert len(said) == MAX_EXPLANATION_CHARS and said.endswith("...")


def failure(status: int, **flags: bool) -> UpstreamFailure:
    return UpstreamFailure(
        "p",
        "m",
        status,
        upstream_message="max_tokens: too large",
        upstream_param="max_tokens",
        **flags,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_caller_mistakes_carry_the_explanation(status: int) -> None:
    error = from_upstream(failure(status))
    assert error.message.endswith("): max_tokens: too large")
    assert error.metadata["upstreamMessage"] == "max_tokens: too large"
    assert error.metadata["upstreamParam"] == "max_tokens"


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        (401, {}),
        (403, {}),
        (400, {"auth_failed": True}),
        (400, {"quota_exhausted": True}),
        (400, {"failed_precondition": True}),
        (429, {}),
        (500, {}),
        (503, {}),
    ],
)
def test_other_failures_never_carry_it(status: int, flags: dict[str, bool]) -> None:
    error = from_upstream(failure(status, **flags))
    assert "upstreamMessage" not in error.metadata and "upstreamParam" not in error.metadata
    assert "too large" not in error.message


def test_context_and_content_filter_carry_it_whatever_the_status() -> None:
    error = from_upstream(failure(500, context_length_exceeded=True))
    assert error.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert error.metadata["upstreamMessage"] == "max_tokens: too large"


# --- each provider kind's mapping --------------------------------------------------------


def test_openai_message_type_and_param() -> None:
    body = {
        "error": {
            "message": "Invalid 'max_completion_tokens': integer below minimum value.",
            "type": "invalid_request_error",
            "param": "max_completion_tokens",
            "code": "integer_below_min_value",
        }
    }
    error = from_upstream(openai_failure("openai", "gpt", 400, {}, json.dumps(body).encode(), 0))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.metadata["upstreamMessage"] == body["error"]["message"]
    assert error.metadata["upstreamType"] == "invalid_request_error"
    assert error.metadata["upstreamParam"] == "max_completion_tokens"
    assert error.message.endswith(body["error"]["message"])


def test_openai_key_refusal_is_not_passed_on() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-abc1****wxyz.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    error = from_upstream(openai_failure("openai", "gpt", 401, {}, json.dumps(body).encode(), 0))
    assert "upstreamMessage" not in error.metadata
    assert "sk-abc1" not in error.message


def test_anthropic_type_and_message() -> None:
    envelope = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    error = from_upstream(anthropic_failure("anthropic", "claude", 400, envelope, {}, 0))
    assert error.metadata["upstreamType"] == "invalid_request_error"
    assert error.metadata["upstreamMessage"] == "max_tokens: Field required"


def test_gemini_message_status_and_field_path() -> None:
    error_object = {
        "code": 400,
        "message": "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": "generation_config.temperature", "description": "Invalid value"}
                ],
            }
        ],
    }
    error = gemini_error("gemini", "gemini-2.5-flash", 400, error_object, {}, 0)
    assert error.metadata["upstreamType"] == "INVALID_ARGUMENT"
    assert error.metadata["upstreamParam"] == "generation_config.temperature"
    assert error.metadata["upstreamMessage"].startswith("Invalid value at")


def test_gemini_key_refusal_is_not_passed_on() -> None:
    error_object = {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
    }
    error = gemini_error("gemini", "gemini-2.5-flash", 400, error_object, {}, 0)
    assert error.reason == "UPSTREAM_AUTH_FAILED"
    assert "upstreamMessage" not in error.metadata and "API key" not in error.message


def test_ollama_error_text() -> None:
    body = json.dumps({"error": "invalid options: num_ctx must be positive"}).encode()
    error = ollama_error("local", "llama3.2", HttpResponse(400, {}, body), "x-request-id", 0)
    assert error.metadata["upstreamMessage"] == "invalid options: num_ctx must be positive"
