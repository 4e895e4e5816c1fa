"""Usage for answers whose provider reported none: the gateway's own estimate, marked
`Usage.estimated`, so that cost, budgets and metrics do not count such calls as free.

Some upstreams send no usage at all (llama.cpp and other OpenAI-compatible servers
ignore `stream_options.include_usage`; some omit `usage` on whole answers), some leave
out one side (Ollama's `prompt_eval_count`). A count the provider left at 0 is filled:
input from the request (service/limits/estimate.py, the estimate rate limits charge,
without its output allowance), output from what the answer holds (text, reasoning,
tool-call names and arguments, UTF-8 bytes / 4 rounded up). A count the provider did
report is never changed.

The pure half (OutputTally, input_tokens, fill_unreported) is wrapped around every
provider by EstimatedUsage, which the registry hands to the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.limits.estimate import input_tokens
from service.limits.estimate import tokens_of_bytes as _tokens
from service.providers.base import CallContext, Deployment, Provider


class OutputTally:
    """The UTF-8 bytes of what an answer returned, chunk by chunk or whole."""

    def __init__(self) -> None:
        self.content_bytes = 0  # text, tool-call names and arguments
        self.reasoning_bytes = 0

    def add_chunk(self, chunk: chat_pb2.StreamChatResponse) -> None:
        self.content_bytes += len(chunk.text_delta.encode())
        self.reasoning_bytes += len(chunk.reasoning_delta.encode())
        for delta in chunk.tool_call_deltas:
            self.content_bytes += len(delta.name.encode()) + len(delta.arguments_delta.encode())

    def add_message(self, message: content_pb2.Message) -> None:
        for part in message.parts:
            kind = part.WhichOneof("kind")
            if kind == "text":
                self.content_bytes += len(part.text.encode())
            elif kind == "tool_call":
                call = part.tool_call
                self.content_bytes += len(call.name.encode()) + len(call.arguments.encode())
            elif kind == "reasoning":
                self.reasoning_bytes += len(part.reasoning.text.encode())

    @property
    def output_tokens(self) -> int:
        return _tokens(self.content_bytes + self.reasoning_bytes)

    @property
    def reasoning_tokens(self) -> int:
        return _tokens(self.reasoning_bytes)


def _unreported(usage: route_pb2.Usage) -> bool:
    return usage.input_tokens == 0 or usage.output_tokens == 0


def fill_unreported(usage: route_pb2.Usage, estimated_input: int, output: OutputTally) -> None:
    """Puts the estimates where the provider reported 0 input or 0 output tokens, and
    marks the usage `estimated` when it changed anything."""
    filled = False
    if usage.input_tokens == 0 and estimated_input > 0:
        usage.input_tokens = estimated_input
        filled = True
    if usage.output_tokens == 0 and output.output_tokens > 0:
        usage.output_tokens = output.output_tokens
        if usage.reasoning_tokens == 0:
            usage.reasoning_tokens = output.reasoning_tokens
        filled = True
    if filled:
        usage.total_tokens = usage.input_tokens + usage.output_tokens
        usage.estimated = True


async def _close(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class EstimatedUsage(Provider):
    """A provider whose every answer carries usage: the provider's own counts, with
    the gateway's estimate (marked) in place of any it did not report."""

    def __init__(self, inner: Provider) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.kind = inner.kind
        self.default_capabilities = inner.default_capabilities
        self.default_context_window = inner.default_context_window
        self.max_embed_inputs = inner.max_embed_inputs
        self.counts_tokens = inner.counts_tokens

    async def count_tokens(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> tuple[int, str]:
        return await self.inner.count_tokens(request, deployment, ctx)

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        response = await self.inner.chat(request, deployment, ctx)
        if _unreported(response.usage):
            output = OutputTally()
            output.add_message(response.message)
            fill_unreported(response.usage, input_tokens(request), output)
        return response

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        output = OutputTally()
        usage_sent = False
        stream = self.inner.stream_chat(request, deployment, ctx)
        try:
            async for chunk in stream:
                output.add_chunk(chunk)
                if chunk.HasField("usage"):
                    if _unreported(chunk.usage):  # the estimate only when it is needed
                        fill_unreported(chunk.usage, input_tokens(request), output)
                    usage_sent = True
                yield chunk
        finally:
            await _close(stream)  # at once, also when the caller stops reading
        if not usage_sent:  # the contract's last chunk, from a provider that left it out
            last = chat_pb2.StreamChatResponse(usage=route_pb2.Usage())
            fill_unreported(last.usage, input_tokens(request), output)
            yield last

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        response = await self.inner.embed(request, deployment, ctx)
        if _unreported(response.usage):
            fill_unreported(response.usage, input_tokens(request), OutputTally())
        return response

    async def list_models(self, deadline: float) -> list[str] | None:
        return await self.inner.list_models(deadline)

    async def aclose(self) -> None:
        await self.inner.aclose()
