"""The context-window check made before a chat call is sent."""

from __future__ import annotations

import grpc
from llmgateway.v1 import chat_pb2, content_pb2

from service.limits.estimate import MESSAGE_OVERHEAD, estimate_tokens, input_tokens
from service.providers.base import Capabilities, Deployment
from service.routing.context import context_too_long


def _request(text: str, **config: int) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="m",
        messages=[
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])
        ],
        generation_config=chat_pb2.GenerationConfig(**config),
    )


def test_input_tokens_count_the_prompt_and_not_the_output() -> None:
    text = "x" * 4000  # 1,000 tokens at 4 bytes each
    expected = 1000 + MESSAGE_OVERHEAD
    assert input_tokens(_request(text)) == expected
    assert input_tokens(_request(text, max_output_tokens=50_000)) == expected
    assert input_tokens(_request(text, reasoning_budget_tokens=8_000)) == expected
    # The charge for rate limits adds the output the call may use.
    assert estimate_tokens(_request(text, max_output_tokens=7)) == expected + 7


def test_the_refusal_names_the_window_and_the_field() -> None:
    deployment = Deployment(
        "small", "llama", "openai_compatible", "m-small", Capabilities(), context_limit=4096
    )
    error = context_too_long(deployment, 5000)
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
    )
    assert [v.field for v in error.field_violations] == ["messages"]
    assert "5000 tokens" in error.message and "4096-token" in error.message
    assert error.metadata["alias"] == "small"
    assert not error.failover
