"""Token counting transforms, golden both ways: the request each provider's counting
endpoint gets, and the count read back from its answer."""

from __future__ import annotations

import pytest
from llmgateway.v1 import chat_pb2, content_pb2

from service.providers.anthropic import AnthropicDialect
from service.providers.base import Capabilities, Deployment
from service.providers.gemini import GeminiDialect
from service.providers.http import HttpResponse
from service.providers.ollama import OllamaDialect
from service.providers.openai import OpenAIDialect


def deployment(kind: str, model: str) -> Deployment:
    return Deployment(
        alias="a",
        provider=kind,
        provider_type=kind,
        upstream_model=model,
        capabilities=Capabilities(),
    )


REQUEST = chat_pb2.ChatRequest(
    model="a",
    messages=[
        content_pb2.Message(role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Brief.")]),
        content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="Hi")]),
    ],
    tools=[content_pb2.Tool(name="lookup")],
    generation_config=chat_pb2.GenerationConfig(
        temperature=0.5, max_output_tokens=2000, reasoning_budget_tokens=1024
    ),
)


def test_anthropic_count_tokens_takes_the_prompt_fields_only() -> None:
    target = deployment("anthropic", "claude-sonnet-4-5")
    dialect = AnthropicDialect("claude")
    spec = dialect.count_tokens_request(REQUEST, target)
    assert (spec.method, spec.url) == ("POST", "messages/count_tokens")
    assert spec.json_body == {
        "model": "claude-sonnet-4-5",
        "system": "Brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    answer = HttpResponse(200, {}, b'{"input_tokens": 2095}')
    assert dialect.parse_count_tokens(answer, target) == 2095


def test_gemini_count_tokens_wraps_the_whole_generate_request() -> None:
    target = deployment("gemini", "gemini-2.5-flash")
    dialect = GeminiDialect("gemini")
    spec = dialect.count_tokens_request(REQUEST, target)
    assert spec.url == "models/gemini-2.5-flash:countTokens"
    inner = spec.json_body["generateContentRequest"]  # type: ignore[index]
    assert inner["model"] == "models/gemini-2.5-flash"
    assert inner["systemInstruction"] == {"parts": [{"text": "Brief."}]}
    assert inner["tools"] == [{"functionDeclarations": [{"name": "lookup"}]}]
    answer = HttpResponse(200, {}, b'{"totalTokens": 31, "promptTokensDetails": []}')
    assert dialect.parse_count_tokens(answer, target) == 31


@pytest.mark.parametrize("dialect", [OpenAIDialect("o"), OllamaDialect("l")])
def test_kinds_without_an_endpoint_say_so(dialect: OpenAIDialect | OllamaDialect) -> None:
    assert not dialect.counts_tokens
