"""Prompt-cache breakpoints and document parts, golden both ways for every provider kind:
the wire each request becomes, refusals before anything is sent, and the cache counts
each provider reports coming back as usage."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import GatewayError
from service.providers.anthropic import AnthropicDialect
from service.providers.anthropic_response import usage_from as anthropic_usage
from service.providers.base import Capabilities, Deployment, Pricing
from service.providers.documents import GEMINI_MAX_INLINE_BYTES, MAX_DOCUMENT_BYTES
from service.providers.gemini import GeminiDialect
from service.providers.gemini_response import usage_from as gemini_usage
from service.providers.ollama import OllamaDialect
from service.providers.openai import OpenAIDialect
from service.providers.openai import usage_from as openai_usage
from service.routing.capabilities import check_chat
from service.routing.pricing import cost_usd
from service.validation import validate_chat

PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
PDF_B64 = base64.b64encode(PDF).decode()
FIVE = content_pb2.CacheControl(ttl=content_pb2.CACHE_TTL_FIVE_MINUTES)
HOUR = content_pb2.CacheControl(ttl=content_pb2.CACHE_TTL_ONE_HOUR)
DEFAULT = content_pb2.CacheControl()


def deployment(kind: str, model: str, **caps: bool) -> Deployment:
    return Deployment(
        alias="a",
        provider=kind,
        provider_type=kind,
        upstream_model=model,
        capabilities=Capabilities(**caps),
    )


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def user(
    *parts: content_pb2.Part, cache: content_pb2.CacheControl | None = None
) -> content_pb2.Message:
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=parts)
    if cache is not None:
        message.cache_control.CopyFrom(cache)
    return message


def anthropic_body(request: chat_pb2.ChatRequest) -> Any:
    spec = AnthropicDialect("claude", 1000).chat_request(
        request, deployment("anthropic", "claude-sonnet-4-5"), stream=False
    )
    return spec.json_body


def document(
    cache_control: content_pb2.CacheControl | None = None, **fields: Any
) -> content_pb2.Part:
    part = content_pb2.Part(document=content_pb2.Document(**fields))
    if cache_control is not None:
        part.cache_control.CopyFrom(cache_control)
    return part


# --- Anthropic: cache_control -----------------------------------------------------------


def test_anthropic_breakpoints_on_tools_system_parts_and_messages() -> None:
    tool = content_pb2.Tool(
        name="lookup", parameters=struct({"type": "object", "properties": {}}), cache_control=HOUR
    )
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM,
                parts=[content_pb2.Part(text="A long manual.")],
                cache_control=DEFAULT,
            ),
            user(
                content_pb2.Part(text="Part one.", cache_control=FIVE), content_pb2.Part(text="Q?")
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(text="A.")]
            ),
            user(content_pb2.Part(text="Next?"), cache=DEFAULT),
        ],
        tools=[tool],
    )
    assert anthropic_body(request) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "system": [
            {"type": "text", "text": "A long manual.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Part one.",
                        "cache_control": {"type": "ephemeral", "ttl": "5m"},
                    },
                    {"type": "text", "text": "Q?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Next?", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
        "tools": [
            {
                "name": "lookup",
                "input_schema": {"type": "object", "properties": {}},
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
    }


def test_anthropic_without_breakpoints_keeps_the_system_string() -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Brief.")]
            ),
            user(content_pb2.Part(text="Hi")),
        ],
    )
    body = anthropic_body(request)
    assert body["system"] == "Brief."
    assert "cache_control" not in json.dumps(body)


def test_anthropic_refuses_a_fifth_breakpoint_naming_it() -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[user(*[content_pb2.Part(text=f"p{i}", cache_control=FIVE) for i in range(5)])],
    )
    with pytest.raises(GatewayError) as caught:
        anthropic_body(request)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [
        "messages[0].parts[4].cache_control"
    ]
    four = chat_pb2.ChatRequest(
        model="claude",
        messages=[user(*[content_pb2.Part(text=f"p{i}", cache_control=FIVE) for i in range(4)])],
    )
    assert json.dumps(anthropic_body(four)).count("cache_control") == 4


def test_providers_that_cache_on_their_own_ignore_breakpoints() -> None:
    marked = chat_pb2.ChatRequest(
        model="m",
        messages=[user(content_pb2.Part(text="Hi", cache_control=HOUR), cache=FIVE)],
        tools=[content_pb2.Tool(name="t", cache_control=FIVE)],
    )
    plain = chat_pb2.ChatRequest(
        model="m",
        messages=[user(content_pb2.Part(text="Hi"))],
        tools=[content_pb2.Tool(name="t")],
    )
    for dialect, target in (
        (OpenAIDialect("o"), deployment("openai", "gpt-4o")),
        (GeminiDialect("g"), deployment("gemini", "gemini-2.5-flash")),
        (OllamaDialect("l"), deployment("ollama", "llama3.2")),
    ):
        sent = dialect.chat_request(marked, target, stream=False).json_body
        assert sent == dialect.chat_request(plain, target, stream=False).json_body


# --- usage: cache reads and writes coming back --------------------------------------------


def test_cache_counts_from_every_provider_that_reports_them() -> None:
    openai = openai_usage(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 1536},
        }
    )
    assert (openai.input_tokens, openai.cached_input_tokens) == (2000, 1536)
    anthropic = anthropic_usage(
        {
            "input_tokens": 20,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 5,
        }
    )
    assert (anthropic.input_tokens, anthropic.cached_input_tokens) == (4020, 3000)
    assert anthropic.cache_write_input_tokens == 1000
    gemini = gemini_usage(
        {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "candidatesTokenCount": 3}
    )
    assert (gemini.input_tokens, gemini.cached_input_tokens) == (5000, 4096)
    prices = Pricing(input=3.0, cached_input=0.3, cache_write_input=3.75, output=15.0)
    assert cost_usd(anthropic, prices) == pytest.approx(
        (20 * 3.0 + 3000 * 0.3 + 1000 * 3.75 + 5 * 15.0) / 1e6
    )


# --- documents ------------------------------------------------------------------------------


def test_anthropic_document_blocks() -> None:
    request = chat_pb2.ChatRequest(
        model="claude",
        messages=[
            user(
                document(data=PDF, mime_type="application/pdf", title="Q3 report"),
                document(url="https://example.com/paper.pdf", cache_control=FIVE),
                document(url=f"data:application/pdf;base64,{PDF_B64}"),
                content_pb2.Part(text="Summarize."),
            )
        ],
    )
    assert anthropic_body(request)["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
            "title": "Q3 report",
        },
        {
            "type": "document",
            "source": {"type": "url", "url": "https://example.com/paper.pdf"},
            "cache_control": {"type": "ephemeral", "ttl": "5m"},
        },
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
        },
        {"type": "text", "text": "Summarize."},
    ]


def test_openai_file_parts_and_url_refusal() -> None:
    target = deployment("openai", "gpt-4o")
    request = chat_pb2.ChatRequest(
        model="gpt",
        messages=[user(document(data=PDF, title="q3.pdf"), content_pb2.Part(text="Summarize."))],
    )
    body = OpenAIDialect("o").chat_request(request, target, stream=False).json_body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "file",
                    "file": {
                        "filename": "q3.pdf",
                        "file_data": f"data:application/pdf;base64,{PDF_B64}",
                    },
                },
                {"type": "text", "text": "Summarize."},
            ],
        }
    ]
    by_url = chat_pb2.ChatRequest(
        model="gpt", messages=[user(document(url="https://example.com/a.pdf"))]
    )
    with pytest.raises(GatewayError) as caught:
        OpenAIDialect("o").chat_request(by_url, target, stream=False)
    assert [v.field for v in caught.value.field_violations] == ["messages[0].parts[0].document.url"]


def test_gemini_inline_and_file_data() -> None:
    request = chat_pb2.ChatRequest(
        model="g",
        messages=[
            user(
                document(data=PDF, title="ignored by Gemini"),
                document(url="https://storage.googleapis.com/b/a.pdf"),
                content_pb2.Part(text="Compare."),
            )
        ],
    )
    body = (
        GeminiDialect("g")
        .chat_request(request, deployment("gemini", "gemini-2.5-flash"), stream=False)
        .json_body
    )
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "application/pdf", "data": PDF_B64}},
                {
                    "fileData": {
                        "mimeType": "application/pdf",
                        "fileUri": "https://storage.googleapis.com/b/a.pdf",
                    }
                },
                {"text": "Compare."},
            ],
        }
    ]


def test_size_limits_per_provider() -> None:
    big = b"%PDF" + b"0" * GEMINI_MAX_INLINE_BYTES
    request = chat_pb2.ChatRequest(model="g", messages=[user(document(data=big))])
    with pytest.raises(GatewayError) as caught:
        GeminiDialect("g").chat_request(request, deployment("gemini", "gemini-2.5-flash"), False)
    assert [v.field for v in caught.value.field_violations] == [
        "messages[0].parts[0].document.data"
    ]
    # Within Anthropic's 32 MiB.
    assert anthropic_body(request)["messages"][0]["content"][0]["type"] == "document"
    huge = chat_pb2.ChatRequest(
        model="g", messages=[user(document(data=b"0" * (MAX_DOCUMENT_BYTES + 1)))]
    )
    with pytest.raises(GatewayError) as refused:
        validate_chat(huge)
    assert [v.field for v in refused.value.field_violations] == [
        "messages[0].parts[0].document.data"
    ]


def test_validation_of_document_parts() -> None:
    request = chat_pb2.ChatRequest(
        model="m",
        messages=[
            user(document(data=PDF, mime_type="text/html", title="t" * 501)),
            user(document()),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT, parts=[document(url="https://e.com/a.pdf")]
            ),
        ],
    )
    with pytest.raises(GatewayError) as caught:
        validate_chat(request)
    assert [v.field for v in caught.value.field_violations] == [
        "messages[0].parts[0].document.mime_type",
        "messages[0].parts[0].document.title",
        "messages[1].parts[0].document",
        "messages[2].parts[0].document",
    ]


def test_the_documents_capability_is_checked_before_any_call() -> None:
    request = chat_pb2.ChatRequest(
        model="m", messages=[user(content_pb2.Part(text="Read:"), document(data=PDF))]
    )
    check_chat(request, deployment("anthropic", "c", documents=True), streaming=False)
    with pytest.raises(GatewayError) as caught:
        check_chat(request, deployment("ollama", "llama3.2"), streaming=False)
    assert caught.value.reason == "CAPABILITY_UNSUPPORTED"
    assert [v.field for v in caught.value.field_violations] == ["messages[0].parts[1].document"]
