"""The gateway's usage estimate for answers whose provider reported none: what it counts,
when it fills a count in, and the provider wrapper that applies it to every answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.providers.base import CallContext, Capabilities, Deployment, Provider
from service.providers.usage_estimate import (
    EstimatedUsage,
    OutputTally,
    fill_unreported,
    input_tokens,
)
from tests.support import chat_request

DEPLOYMENT = Deployment("a", "p", "fake", "m", Capabilities())
CTX = CallContext("r", deadline=1e12)


def test_input_is_the_rate_limit_estimate_without_its_output_allowance() -> None:
    request = chat_request("Hello there")  # 11 bytes: 3 tokens, and 4 for the message
    assert input_tokens(request) == 7
    request.generation_config.max_output_tokens = 500
    assert input_tokens(request) == 7
    request.generation_config.ClearField("max_output_tokens")
    request.generation_config.reasoning_budget_tokens = 1000
    assert input_tokens(request) == 7
    request.messages.append(
        content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="é" * 4)])
    )
    assert input_tokens(request) == 7 + 4 + 2
    assert input_tokens(embed_pb2.EmbedRequest(model="e", inputs=["abcd", "abcde"])) == 3


def test_the_tally_counts_text_tool_calls_and_reasoning_in_utf8_bytes() -> None:
    tally = OutputTally()
    tally.add_chunk(chat_pb2.StreamChatResponse(text_delta="héllo"))  # 6 bytes
    tally.add_chunk(chat_pb2.StreamChatResponse(reasoning_delta="abcd"))
    tally.add_chunk(
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[chat_pb2.ToolCallDelta(index=0, name="f", arguments_delta='{"a":')]
        )
    )
    tally.add_chunk(
        chat_pb2.StreamChatResponse(
            tool_call_deltas=[chat_pb2.ToolCallDelta(index=0, arguments_delta="1}")]
        )
    )
    assert (tally.content_bytes, tally.reasoning_bytes) == (14, 4)
    assert (tally.output_tokens, tally.reasoning_tokens) == (5, 1)

    whole = OutputTally()
    whole.add_message(
        content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT,
            parts=[
                content_pb2.Part(reasoning=content_pb2.Reasoning(text="abcd")),
                content_pb2.Part(text="héllo"),
                content_pb2.Part(tool_call=content_pb2.ToolCall(name="f", arguments='{"a":1}')),
            ],
        )
    )
    assert (whole.content_bytes, whole.reasoning_bytes) == (14, 4)


def _tally(text: str) -> OutputTally:
    tally = OutputTally()
    tally.add_chunk(chat_pb2.StreamChatResponse(text_delta=text))
    return tally


def test_counts_the_provider_left_out_are_filled_and_marked() -> None:
    usage = route_pb2.Usage()
    fill_unreported(usage, 7, _tally("a" * 9))
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 3, 10)
    assert usage.estimated


def test_reported_counts_are_never_changed() -> None:
    usage = route_pb2.Usage(input_tokens=12, output_tokens=1, total_tokens=13)
    fill_unreported(usage, 7, _tally("a" * 400))
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (12, 1, 13)
    assert not usage.estimated


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ((0, 2), (7, 2, 9)),  # Ollama without prompt_eval_count (a cached prompt)
        ((12, 0), (12, 3, 15)),
    ],
)
def test_one_missing_side_is_filled_and_the_other_kept(
    reported: tuple[int, int], expected: tuple[int, int, int]
) -> None:
    usage = route_pb2.Usage(input_tokens=reported[0], output_tokens=reported[1])
    fill_unreported(usage, 7, _tally("a" * 9))
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == expected
    assert usage.estimated


def test_an_empty_answer_with_reported_input_is_not_an_estimate() -> None:
    usage = route_pb2.Usage(input_tokens=12, total_tokens=12)
    fill_unreported(usage, 7, OutputTally())
    assert (usage.output_tokens, usage.total_tokens, usage.estimated) == (0, 12, False)


def test_estimated_reasoning_is_part_of_the_output() -> None:
    tally = _tally("abcd")
    tally.add_chunk(chat_pb2.StreamChatResponse(reasoning_delta="r" * 8))
    usage = route_pb2.Usage()
    fill_unreported(usage, 1, tally)
    assert (usage.output_tokens, usage.reasoning_tokens) == (3, 2)


class _Scripted(Provider):
    kind = "fake"
    default_capabilities = Capabilities(vision=True)

    def __init__(self, chunks: list[chat_pb2.StreamChatResponse], usage: route_pb2.Usage) -> None:
        super().__init__("p")
        self.chunks = chunks
        self.usage = usage
        self.closed = asyncio.Event()

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        message = content_pb2.Message(
            role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(text="a" * 10)]
        )
        return chat_pb2.ChatResponse(message=message, usage=self.usage)

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        try:
            for chunk in self.chunks:
                yield chunk
        finally:
            self.closed.set()

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        return embed_pb2.EmbedResponse(usage=self.usage)


TEXT = chat_pb2.StreamChatResponse(text_delta="a" * 10)
DONE = chat_pb2.StreamChatResponse(finish_reason=chat_pb2.FINISH_REASON_STOP)


async def _streamed(provider: Provider) -> list[chat_pb2.StreamChatResponse]:
    return [c async for c in provider.stream_chat(chat_request("hi"), DEPLOYMENT, CTX)]


async def test_the_wrapper_fills_a_zero_usage_chunk_and_keeps_a_reported_one() -> None:
    zero = chat_pb2.StreamChatResponse(usage=route_pb2.Usage())
    chunks = await _streamed(EstimatedUsage(_Scripted([TEXT, DONE, zero], route_pb2.Usage())))
    assert len(chunks) == 3
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (5, 3)
    assert chunks[-1].usage.estimated

    reported = chat_pb2.StreamChatResponse(
        usage=route_pb2.Usage(input_tokens=9, output_tokens=4, total_tokens=13)
    )
    chunks = await _streamed(EstimatedUsage(_Scripted([TEXT, DONE, reported], route_pb2.Usage())))
    assert chunks[-1].usage == reported.usage


async def test_the_wrapper_adds_the_usage_chunk_a_provider_left_out() -> None:
    chunks = await _streamed(EstimatedUsage(_Scripted([TEXT, DONE], route_pb2.Usage())))
    assert [c.HasField("usage") for c in chunks] == [False, False, True]
    assert chunks[-1].usage.total_tokens == 8 and chunks[-1].usage.estimated


async def test_closing_the_wrapper_closes_the_provider_stream_at_once() -> None:
    inner = _Scripted([TEXT, TEXT, DONE], route_pb2.Usage())
    stream = EstimatedUsage(inner).stream_chat(chat_request("hi"), DEPLOYMENT, CTX)
    assert await anext(stream) == TEXT
    assert not inner.closed.is_set()
    await stream.aclose()  # type: ignore[attr-defined]
    assert inner.closed.is_set()


async def test_the_wrapper_fills_unary_and_embed_usage_and_names_the_provider() -> None:
    wrapped = EstimatedUsage(_Scripted([], route_pb2.Usage()))
    assert (wrapped.name, wrapped.kind) == ("p", "fake")
    assert wrapped.default_capabilities == Capabilities(vision=True)
    response = await wrapped.chat(chat_request("hi"), DEPLOYMENT, CTX)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 3)
    assert response.usage.estimated
    embedded = await wrapped.embed(
        embed_pb2.EmbedRequest(model="e", inputs=["abcdefgh"]), DEPLOYMENT, CTX
    )
    assert (embedded.usage.input_tokens, embedded.usage.estimated) == (2, True)

    exact = EstimatedUsage(_Scripted([], route_pb2.Usage(input_tokens=3, output_tokens=1)))
    response = await exact.chat(chat_request("hi"), DEPLOYMENT, CTX)
    assert (response.usage.input_tokens, response.usage.estimated) == (3, False)
