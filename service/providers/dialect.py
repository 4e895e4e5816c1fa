"""The pure half of an HTTP adapter: a Dialect turns proto requests into upstream
requests and upstream responses, stream events and errors into proto messages and
GatewayErrors. No I/O, no logging, no clock of its own (`now` is passed in).

Dialects may raise ValueError, KeyError, TypeError or IndexError on malformed upstream
data: the transport half turns those into INTERNAL `UPSTREAM_PROTOCOL_ERROR`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2

from service.errors import GatewayError, unsupported_capability
from service.providers.base import Capabilities, Deployment
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.upstream_errors import empty_stream, stream_truncated


def usage(
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> route_pb2.Usage:
    """A normalized Usage (reference §1.4): input includes cached, output includes
    reasoning; total is their sum."""
    return route_pb2.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_input_tokens=cache_write_input_tokens,
        reasoning_tokens=reasoning_tokens,
    )


def has_output(chunk: chat_pb2.StreamChatResponse) -> bool:
    """Did the model say anything: text, reasoning, a tool call or why it stopped?"""
    return bool(
        chunk.text_delta
        or chunk.reasoning_delta
        or chunk.reasoning_signature
        or chunk.reasoning_redacted
        or chunk.refusal_delta
        or chunk.tool_call_deltas
        or chunk.finish_reason
    )


def has_content(chunk: chat_pb2.StreamChatResponse) -> bool:
    """False for chunks that say nothing (role-only deltas, keep-alives)."""
    return has_output(chunk) or chunk.HasField("usage")


class StreamParser(abc.ABC):
    """Turns decoded stream events (SseEvent or NDJSON values) into chunks, in order.

    Subclasses implement `parse`, set `finish_reason` when the upstream says why it
    stopped (and emit it on a chunk), keep the latest `usage`, set `finished` when the
    upstream's final event was seen, and `terminated` when nothing more will come (stop
    reading). A stream that ends without a finish reason is cut; one that ends before
    any output at all is empty, a failure of its own (see `empty_stream`).
    """

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.finished = False
        self.terminated = False
        self.usage: route_pb2.Usage | None = None
        self.finish_reason: chat_pb2.FinishReason.ValueType = chat_pb2.FINISH_REASON_UNSPECIFIED
        self.output_seen = False  # a chunk said something beyond usage
        # The response's own id from the body (`chatcmpl-…`, `msg_…`): the route's
        # upstream_request_id when the upstream sent no request-id header.
        self.response_id = ""

    def feed(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        """Chunks for one event; raises GatewayError for an error sent in the stream."""
        chunks = self.parse(event)
        self.output_seen = self.output_seen or any(map(has_output, chunks))
        return chunks

    @abc.abstractmethod
    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        """Chunks for one event (`feed` is what callers use)."""

    def finish(self) -> list[chat_pb2.StreamChatResponse]:
        """Called at EOF: the final usage chunk, or an error for a cut or empty stream."""
        if not self.finished or self.finish_reason == chat_pb2.FINISH_REASON_UNSPECIFIED:
            raise self._unfinished()
        return [chat_pb2.StreamChatResponse(usage=self.usage or usage())]

    def _unfinished(self) -> GatewayError:
        if self.output_seen:
            return stream_truncated(self.provider, self.model)
        return empty_stream(self.provider, self.model)


class Dialect(abc.ABC):
    kind: ClassVar[str]
    framing: ClassVar[str] = "sse"  # or "ndjson"
    request_id_header: ClassVar[str] = "x-request-id"
    default_capabilities: ClassVar[Capabilities] = Capabilities(vision=True)
    default_context_window: ClassVar[int] = 0
    max_embed_inputs: ClassVar[int] = 2048  # inputs one upstream Embed request may carry

    def __init__(self, provider: str) -> None:
        self.provider = provider

    @abc.abstractmethod
    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec: ...

    @abc.abstractmethod
    def parse_chat(
        self, response: HttpResponse, deployment: Deployment
    ) -> chat_pb2.ChatResponse: ...

    @abc.abstractmethod
    def stream_parser(self, deployment: Deployment) -> StreamParser: ...

    @abc.abstractmethod
    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        """The GatewayError for a failed response (any status ≥ 400, or a 200 whose body
        is an error envelope where a stream was expected)."""

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        raise unsupported_capability("model", deployment.alias, "embeddings")

    def models_request(self) -> HttpRequestSpec | None:
        """The request for the provider's model list; None when it offers none."""
        return None

    def parse_models(self, response: HttpResponse) -> list[str]:
        """Model names from a model-list response (models_request's)."""
        return []

    # Token counting: dialects whose provider has a counting endpoint set `counts_tokens`
    # and implement both methods.
    counts_tokens: ClassVar[bool] = False

    def count_tokens_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        raise NotImplementedError(f"{self.kind} has no token counting endpoint")

    def parse_count_tokens(self, response: HttpResponse, deployment: Deployment) -> int:
        raise NotImplementedError(f"{self.kind} has no token counting endpoint")

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        raise unsupported_capability("model", deployment.alias, "embeddings")
