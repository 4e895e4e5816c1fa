"""Golden tests, both ways and without sockets, of the contract's SDK-level fields in every
provider kind's transforms: reasoning effort, redacted reasoning, refusals, provider
metadata, log probabilities and candidates (reference §2-§6)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import GatewayError
from service.providers.anthropic import AnthropicDialect
from service.providers.azure import AzureOpenAIDialect
from service.providers.base import Capabilities, Deployment
from service.providers.dialect import Dialect
from service.providers.framing import SseDecoder
from service.providers.gemini import GeminiDialect
from service.providers.http import HttpResponse
from service.providers.ollama import OllamaDialect
from service.providers.openai import OpenAIDialect

EFFORTS = [
    (chat_pb2.REASONING_EFFORT_LOW, "low"),
    (chat_pb2.REASONING_EFFORT_MEDIUM, "medium"),
    (chat_pb2.REASONING_EFFORT_HIGH, "high"),
]


def deployment(kind: str, model: str) -> Deployment:
    return Deployment("alias", "p", kind, model, Capabilities(vision=True))


def request(text: str = "hi", **config: Any) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="alias",
        messages=[
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])
        ],
        generation_config=chat_pb2.GenerationConfig(**config),
    )


def body(dialect: Dialect, kind: str, model: str, chat: chat_pb2.ChatRequest, stream: bool) -> Any:
    return dialect.chat_request(chat, deployment(kind, model), stream).json_body


def ok(payload: Any) -> HttpResponse:
    return HttpResponse(200, {"content-type": "application/json"}, json.dumps(payload).encode())


def stream(dialect: Dialect, kind: str, model: str, wire: str) -> list[chat_pb2.StreamChatResponse]:
    parser = dialect.stream_parser(deployment(kind, model))
    decoder = SseDecoder()
    events = [*decoder.feed(wire.encode()), *decoder.close()]
    return [c for e in events for c in parser.feed(e)] + parser.finish()


def sse(*events: Any) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


# --- OpenAI, Azure, compatible ------------------------------------------------------


@pytest.mark.parametrize(("effort", "wire"), EFFORTS)
def test_openai_request_reasoning_logprobs_and_n(
    effort: chat_pb2.ReasoningEffort.ValueType, wire: str
) -> None:
    chat = request(reasoning_effort=effort, logprobs=True, top_logprobs=3, candidate_count=2)
    sent = body(OpenAIDialect("p"), "openai", "o4-mini", chat, stream=False)
    assert {k: sent[k] for k in ("reasoning_effort", "logprobs", "top_logprobs", "n")} == {
        "reasoning_effort": wire,
        "logprobs": True,
        "top_logprobs": 3,
        "n": 2,
    }
    streamed = body(OpenAIDialect("p"), "openai", "o4-mini", chat, stream=True)
    assert "n" not in streamed and streamed["reasoning_effort"] == wire


def test_openai_request_without_the_new_settings_is_unchanged() -> None:
    sent = body(OpenAIDialect("p"), "openai", "gpt-4o-mini", request(), stream=False)
    assert sent == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


OPENAI_RESPONSE = {
    "id": "chatcmpl-9x2",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hi!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
            "logprobs": {
                "content": None,
                "refusal": [{"token": "I", "logprob": -0.1, "bytes": [73], "top_logprobs": []}],
            },
            "finish_reason": "stop",
        },
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 30,
        "total_tokens": 39,
        "completion_tokens_details": {"reasoning_tokens": 24},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_44709d6fcb",
}


def test_openai_response_refusal_candidates_metadata_and_reasoning_usage() -> None:
    parsed = OpenAIDialect("p").parse_chat(ok(OPENAI_RESPONSE), deployment("openai", "m"))
    assert parsed.finish_reason == chat_pb2.FINISH_REASON_REFUSAL
    assert parsed.raw_finish_reason == "stop"
    assert parsed.refusal == "I can't help."
    assert [p.text for p in parsed.message.parts] == [""]
    assert parsed.usage.reasoning_tokens == 24
    assert [(c.index, c.message.parts[0].text, c.finish_reason) for c in parsed.candidates] == [
        (1, "Hi!", chat_pb2.FINISH_REASON_STOP)
    ]
    assert json_format.MessageToDict(parsed.provider_metadata) == {
        "system_fingerprint": "fp_44709d6fcb",
        "service_tier": "default",
    }


def test_openai_response_logprobs() -> None:
    payload = json.loads(json.dumps(OPENAI_RESPONSE))
    payload["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": {
                "content": [
                    {
                        "token": "Hello",
                        "logprob": -0.31,
                        "bytes": [72, 101, 108, 108, 111],
                        "top_logprobs": [
                            {"token": "Hello", "logprob": -0.31, "bytes": None},
                            {"token": "Hi", "logprob": -1.4, "bytes": None},
                        ],
                    },
                    {"token": " there", "logprob": -0.02, "bytes": None, "top_logprobs": []},
                ],
                "refusal": None,
            },
            "finish_reason": "stop",
        }
    ]
    parsed = OpenAIDialect("p").parse_chat(ok(payload), deployment("openai", "m"))
    assert json_format.MessageToDict(parsed)["logprobs"] == [
        {
            "token": "Hello",
            "logprob": -0.31,
            "topLogprobs": [{"token": "Hello", "logprob": -0.31}, {"token": "Hi", "logprob": -1.4}],
        },
        {"token": " there", "logprob": -0.02},
    ]
    assert parsed.refusal == "" and parsed.finish_reason == chat_pb2.FINISH_REASON_STOP


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> Any:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": choices,
        **extra,
    }


def test_openai_stream_refusal_logprobs_and_final_metadata() -> None:
    lp = {"content": [{"token": "ok", "logprob": -0.5, "bytes": None, "top_logprobs": []}]}
    wire = sse(
        _chunk({"role": "assistant", "content": "", "refusal": None}, system_fingerprint="fp_1"),
        {
            **_chunk({"content": "ok"}),
            "choices": [
                {"index": 0, "delta": {"content": "ok"}, "logprobs": lp, "finish_reason": None}
            ],
        },
        _chunk({"refusal": "I can't"}),
        _chunk({"refusal": " help."}),
        _chunk({}, "stop"),
        _chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 4}, service_tier="default"),
        "[DONE]",
    )
    chunks = stream(OpenAIDialect("p"), "openai", "m", wire)
    assert "".join(c.refusal_delta for c in chunks) == "I can't help."
    assert [t.token for c in chunks for t in c.logprobs] == ["ok"]
    assert [(c.finish_reason, c.raw_finish_reason) for c in chunks if c.finish_reason] == [
        (chat_pb2.FINISH_REASON_REFUSAL, "stop")
    ]
    assert chunks[-1].HasField("usage")
    assert json_format.MessageToDict(chunks[-1].provider_metadata) == {
        "system_fingerprint": "fp_1",
        "service_tier": "default",
    }
    assert not any(c.HasField("provider_metadata") for c in chunks[:-1])


def test_azure_content_filter_results_travel_in_metadata() -> None:
    verdict = {"hate": {"filtered": False, "severity": "safe"}}
    prompt = [{"prompt_index": 0, "content_filter_results": verdict}]
    payload = {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o",
        "prompt_filter_results": prompt,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
                "content_filter_results": verdict,
            }
        ],
    }
    dialect = AzureOpenAIDialect("p", "2024-10-21", v1_api=False)
    parsed = dialect.parse_chat(ok(payload), deployment("azure_openai", "d"))
    assert json_format.MessageToDict(parsed.provider_metadata) == {
        "prompt_filter_results": prompt,
        "content_filter_results": verdict,
    }
    wire = sse(
        {"id": "", "object": "", "model": "", "choices": [], "prompt_filter_results": prompt},
        {
            **_chunk({"content": "fine"}),
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "fine"},
                    "finish_reason": None,
                    "content_filter_results": verdict,
                }
            ],
        },
        _chunk({}, "stop"),
        _chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        "[DONE]",
    )
    chunks = stream(dialect, "azure_openai", "d", wire)
    assert json_format.MessageToDict(chunks[-1].provider_metadata) == {
        "prompt_filter_results": prompt,
        "content_filter_results": verdict,
    }


# --- Anthropic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget"),
    [
        (chat_pb2.REASONING_EFFORT_LOW, 1024),
        (chat_pb2.REASONING_EFFORT_MEDIUM, 4096),
        (chat_pb2.REASONING_EFFORT_HIGH, 16384),
    ],
)
def test_anthropic_effort_is_a_thinking_budget_on_top_of_the_default_length(
    effort: chat_pb2.ReasoningEffort.ValueType, budget: int
) -> None:
    sent = body(
        AnthropicDialect("p", 4096), "anthropic", "c", request(reasoning_effort=effort), False
    )
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert sent["max_tokens"] == budget + 4096


def test_anthropic_budget_wins_and_a_budget_too_large_names_its_field() -> None:
    both = request(
        reasoning_effort=chat_pb2.REASONING_EFFORT_HIGH,
        reasoning_budget_tokens=1500,
        max_output_tokens=2000,
    )
    sent = body(AnthropicDialect("p", 4096), "anthropic", "c", both, False)
    assert (sent["thinking"]["budget_tokens"], sent["max_tokens"]) == (1500, 2000)
    too_large = request(reasoning_effort=chat_pb2.REASONING_EFFORT_HIGH, max_output_tokens=2000)
    with pytest.raises(GatewayError) as caught:
        body(AnthropicDialect("p", 4096), "anthropic", "c", too_large, False)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [
        "generation_config.reasoning_effort"
    ]


def test_anthropic_redacted_reasoning_goes_back_as_it_came() -> None:
    chat = request("first")
    chat.messages.add(
        role=content_pb2.ROLE_ASSISTANT,
        parts=[
            content_pb2.Part(reasoning=content_pb2.Reasoning(text="t", signature="Sig")),
            content_pb2.Part(reasoning=content_pb2.Reasoning(redacted="EmwKAhgB")),
            content_pb2.Part(text="answer"),
        ],
    )
    chat.messages.add(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="next")])
    sent = body(AnthropicDialect("p", 4096), "anthropic", "c", chat, False)
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "t", "signature": "Sig"},
            {"type": "redacted_thinking", "data": "EmwKAhgB"},
            {"type": "text", "text": "answer"},
        ],
    }


def test_anthropic_stop_sequence_in_metadata_both_ways() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [{"type": "text", "text": "one "}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "STOP",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    parsed = AnthropicDialect("p").parse_chat(ok(message), deployment("anthropic", "c"))
    assert json_format.MessageToDict(parsed.provider_metadata) == {"stop_sequence": "STOP"}
    refused = dict(message, stop_reason="refusal", stop_sequence=None)
    parsed = AnthropicDialect("p").parse_chat(ok(refused), deployment("anthropic", "c"))
    assert parsed.finish_reason == chat_pb2.FINISH_REASON_REFUSAL
    assert not parsed.HasField("provider_metadata")
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    wire = "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"
        for e in [
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": "EmwK"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "one "},
            },
            {"type": "content_block_stop", "index": 1},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "STOP"},
                "usage": {"output_tokens": 1},
            },
            {"type": "message_stop"},
        ]
    )
    chunks = stream(AnthropicDialect("p"), "anthropic", "c", wire)
    assert [c.reasoning_redacted for c in chunks if c.reasoning_redacted] == ["EmwK"]
    assert json_format.MessageToDict(chunks[-1].provider_metadata) == {"stop_sequence": "STOP"}


# --- Gemini -------------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "level"), EFFORTS)
def test_gemini_effort_is_a_level_for_gemini_3_and_a_budget_before(
    effort: chat_pb2.ReasoningEffort.ValueType, level: str
) -> None:
    budgets = {"low": 1024, "medium": 8192, "high": 24576}
    chat = request(reasoning_effort=effort)
    sent = body(GeminiDialect("p"), "gemini", "gemini-2.5-flash", chat, False)
    assert sent["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": budgets[level],
        "includeThoughts": True,
    }
    sent = body(GeminiDialect("p"), "gemini", "gemini-3-flash-preview", chat, False)
    assert sent["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": level,
        "includeThoughts": True,
    }
    sent = body(GeminiDialect("p"), "gemini", "gemini-3-pro-preview", chat, False)
    pro = "high" if level == "medium" else level  # Gemini 3 Pro has no medium level
    assert sent["generationConfig"]["thinkingConfig"]["thinkingLevel"] == pro
    chat.generation_config.reasoning_budget_tokens = 300
    sent = body(GeminiDialect("p"), "gemini", "gemini-3-pro-preview", chat, False)
    assert sent["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 300


def test_gemini_request_logprobs_and_candidates() -> None:
    chat = request(logprobs=True, top_logprobs=2, candidate_count=3)
    sent = body(GeminiDialect("p"), "gemini", "gemini-2.5-flash", chat, False)
    assert sent["generationConfig"] == {
        "responseLogprobs": True,
        "logprobs": 2,
        "candidateCount": 3,
    }
    streamed = body(GeminiDialect("p"), "gemini", "gemini-2.5-flash", chat, True)
    assert "candidateCount" not in streamed["generationConfig"]


GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Paris"}]},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
            ],
            "citationMetadata": {"citationSources": [{"startIndex": 0, "endIndex": 5}]},
            "groundingMetadata": {"webSearchQueries": ["capital of france"]},
            "avgLogprobs": -0.2,
            "logprobsResult": {
                "topCandidates": [
                    {
                        "candidates": [
                            {"token": "Paris", "logProbability": -0.2},
                            {"token": "Lyon", "logProbability": -3.1},
                        ]
                    }
                ],
                "chosenCandidates": [{"token": "Paris", "logProbability": -0.2}],
            },
        },
        {
            "content": {"role": "model", "parts": [{"text": "It is Paris."}]},
            "finishReason": "STOP",
            "index": 1,
        },
    ],
    "usageMetadata": {
        "promptTokenCount": 5,
        "candidatesTokenCount": 4,
        "thoughtsTokenCount": 12,
        "totalTokenCount": 21,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "r-1",
}


def test_gemini_response_candidates_logprobs_metadata_and_thoughts() -> None:
    parsed = GeminiDialect("p").parse_chat(ok(GEMINI_RESPONSE), deployment("gemini", "g"))
    assert parsed.message.parts[0].text == "Paris"
    assert [(c.index, c.message.parts[0].text) for c in parsed.candidates] == [(1, "It is Paris.")]
    assert json_format.MessageToDict(parsed)["logprobs"] == [
        {
            "token": "Paris",
            "logprob": -0.2,
            "topLogprobs": [
                {"token": "Paris", "logprob": -0.2},
                {"token": "Lyon", "logprob": -3.1},
            ],
        }
    ]
    assert parsed.usage.reasoning_tokens == 12
    assert set(json_format.MessageToDict(parsed.provider_metadata)) == {
        "safety_ratings",
        "citation_metadata",
        "grounding_metadata",
    }


def test_gemini_stream_metadata_on_the_final_chunk() -> None:
    first = {k: v for k, v in GEMINI_RESPONSE.items() if k != "candidates"}
    candidate = dict(GEMINI_RESPONSE["candidates"][0])  # type: ignore[index]
    wire = "".join(
        f"data: {json.dumps(p)}\r\n\r\n"
        for p in [
            {**first, "candidates": [{**candidate, "finishReason": None}]},
            {
                **first,
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "!"}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
            },
        ]
    )
    chunks = stream(GeminiDialect("p"), "gemini", "g", wire)
    assert [t.token for c in chunks for t in c.logprobs] == ["Paris"]
    assert set(json_format.MessageToDict(chunks[-1].provider_metadata)) == {
        "safety_ratings",
        "citation_metadata",
        "grounding_metadata",
    }


# --- Ollama -------------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "level"), EFFORTS)
def test_ollama_effort_is_a_think_level(
    effort: chat_pb2.ReasoningEffort.ValueType, level: str
) -> None:
    sent = body(OllamaDialect("p"), "ollama", "qwen3", request(reasoning_effort=effort), False)
    assert sent["think"] == level
    budget_only = request(reasoning_budget_tokens=500)
    assert body(OllamaDialect("p"), "ollama", "qwen3", budget_only, False)["think"] is True
