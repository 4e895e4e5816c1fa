"""An HTTP provider: a Dialect (pure transforms) driven over an UpstreamClient."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Protocol, TypeVar

from llmgateway.v1 import chat_pb2, embed_pb2

from service.errors import GatewayError
from service.providers import provider_options
from service.providers.base import CallContext, Deployment, Provider, Timeouts
from service.providers.dialect import Dialect, StreamParser, has_content
from service.providers.framing import FramingError, NdjsonDecoder, SseDecoder
from service.providers.http import HttpRequestSpec, HttpResponse, UpstreamClient
from service.providers.upstream_errors import UpstreamFailure, from_upstream, transport_failure

T = TypeVar("T")
R = TypeVar("R", chat_pb2.ChatResponse, embed_pb2.EmbedResponse)
_MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError)


DRAIN_SECONDS = 1.0
DRAIN_BYTES = 64 * 1024


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Reads what follows a stream's terminator (usually only the end of the chunked
    body), so that the connection goes back to the pool instead of being closed.
    Bounded: an upstream that keeps sending or stays silent loses its connection."""
    received = 0
    with contextlib.suppress(TimeoutError, GatewayError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for raw in chunks:
                received += len(raw)
                if received > DRAIN_BYTES:
                    return


def _name_request(chunk: chat_pb2.StreamChatResponse, request_id: str) -> None:
    """The first chunk names the upstream request: the header's id, else the body's."""
    if request_id:
        chunk.route.upstream_request_id = request_id


class TokenSource(Protocol):
    """Credentials that change over time (Entra ID tokens), added to each request."""

    async def headers(self) -> Mapping[str, str]: ...

    def invalidate(self, rejected: Mapping[str, str]) -> None: ...

    async def aclose(self) -> None: ...


class HttpProvider(Provider):
    def __init__(
        self,
        name: str,
        dialect: Dialect,
        client: UpstreamClient,
        tokens: TokenSource | None = None,
    ) -> None:
        super().__init__(name)
        self.tokens = tokens
        self.kind = dialect.kind
        self.default_capabilities = dialect.default_capabilities
        self.default_context_window = dialect.default_context_window
        self.max_embed_inputs = dialect.max_embed_inputs
        self.counts_tokens = dialect.counts_tokens
        self.dialect = dialect
        self.client = client

    @staticmethod
    def _local(build: Callable[[], T]) -> T:
        """A request transform's result; its refusal is marked as made before any
        upstream request (no attempt, no deployment tried)."""
        try:
            return build()
        except GatewayError as error:
            error.local = True
            raise

    def _parsed(self, deployment: Deployment, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except GatewayError:
            raise
        except _MALFORMED as exc:
            raise transport_failure(
                self.name, deployment.upstream_model, "protocol", type(exc).__name__
            ) from None

    async def _authorized(self, spec: HttpRequestSpec) -> HttpRequestSpec:
        if self.tokens is None:
            return spec
        return replace(spec, headers={**spec.headers, **await self.tokens.headers()})

    def _error(
        self, response: HttpResponse, deployment: Deployment, sent: HttpRequestSpec
    ) -> GatewayError:
        if response.status == 401 and self.tokens is not None:
            self.tokens.invalidate(sent.headers)
        if response.status < 400:
            # An error envelope with 200 where a stream was expected: treat as a bad gateway.
            response = HttpResponse(502, response.headers, response.body)
        try:
            return self.dialect.parse_error(response, deployment, time.time())
        except _MALFORMED:
            return from_upstream(
                UpstreamFailure(self.name, deployment.upstream_model, response.status)
            )

    def _request_id(self, headers: Mapping[str, str]) -> str:
        return headers.get(self.dialect.request_id_header, "")

    def _feed(
        self, parser: StreamParser, event: object, deployment: Deployment
    ) -> list[chat_pb2.StreamChatResponse]:
        chunks = self._parsed(deployment, lambda: parser.feed(event))
        return [chunk for chunk in chunks if has_content(chunk)]

    async def _unary(
        self,
        spec: HttpRequestSpec,
        deployment: Deployment,
        ctx: CallContext,
        parse: Callable[[HttpResponse, Deployment], R],
    ) -> R:
        """One request, one whole response: sent, checked, parsed, its request id kept."""
        spec = await self._authorized(spec)
        response = await self.client.request(
            spec, ctx.deadline, deployment.upstream_model, deployment.timeouts
        )
        if ctx.observe_headers is not None:
            ctx.observe_headers(response.headers)
        if not 200 <= response.status < 300:
            raise self._error(response, deployment, spec)
        result = self._parsed(deployment, lambda: parse(response, deployment))
        # The header wins; a dialect may have found an id in the body (Gemini's responseId).
        result.route.upstream_request_id = (
            self._request_id(response.headers) or result.route.upstream_request_id
        )
        return result

    def _chat_spec(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        """The dialect's request, with the caller's provider_options merged into its body
        (routing has checked that the alias allows them)."""
        spec = self.dialect.chat_request(request, deployment, stream)
        if not request.provider_options.fields:
            return spec
        return replace(
            spec, json_body=provider_options.merged(spec.json_body, request.provider_options)
        )

    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        spec = self._local(lambda: self._chat_spec(request, deployment, stream=False))
        return await self._unary(spec, deployment, ctx, self.dialect.parse_chat)

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        spec = await self._authorized(
            self._local(lambda: self._chat_spec(request, deployment, stream=True))
        )
        model = deployment.upstream_model
        async with self.client.stream(spec, ctx.deadline, model, deployment.timeouts) as upstream:
            if ctx.observe_headers is not None:
                ctx.observe_headers(upstream.headers)
            content_type = upstream.headers.get("content-type", "")
            if not 200 <= upstream.status < 300 or content_type.startswith("application/json"):
                body = await upstream.read_body()
                failed = HttpResponse(upstream.status, upstream.headers, body)
                raise self._error(failed, deployment, spec)
            limit = self.client.settings.max_response_bytes
            decoder = SseDecoder(limit) if self.dialect.framing == "sse" else NdjsonDecoder(limit)
            parser = self.dialect.stream_parser(deployment)
            request_id = self._request_id(upstream.headers)
            first = True
            received = 0
            chunks = upstream.chunks()
            try:
                async for raw in chunks:
                    received += len(raw)
                    if received > limit:  # the whole stream, not just one event
                        raise transport_failure(self.name, model, "too_large", "stream")
                    for event in decoder.feed(raw):
                        for chunk in self._feed(parser, event, deployment):
                            if first:
                                _name_request(chunk, request_id or parser.response_id)
                            first = False
                            yield chunk
                    if parser.terminated:
                        break
                else:
                    for event in decoder.close():
                        for chunk in self._feed(parser, event, deployment):
                            yield chunk
            except FramingError as exc:
                raise transport_failure(self.name, model, "protocol", str(exc)) from None
            if parser.terminated:
                await _drain(chunks)
            for chunk in self._parsed(deployment, parser.finish):
                yield chunk

    async def count_tokens(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> tuple[int, str]:
        spec = self._local(lambda: self.dialect.count_tokens_request(request, deployment))
        spec = await self._authorized(spec)
        response = await self.client.request(
            spec, ctx.deadline, deployment.upstream_model, deployment.timeouts
        )
        if not 200 <= response.status < 300:
            raise self._error(response, deployment, spec)
        tokens = self._parsed(
            deployment, lambda: self.dialect.parse_count_tokens(response, deployment)
        )
        return tokens, self._request_id(response.headers)

    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        spec = self._local(lambda: self.dialect.embed_request(request, deployment))
        return await self._unary(spec, deployment, ctx, self.dialect.parse_embed)

    async def list_models(self, deadline: float) -> list[str] | None:
        spec = self.dialect.models_request()
        if spec is None:
            return None
        spec = await self._authorized(spec)
        response = await self.client.request(spec, deadline, "models", Timeouts())
        if not 200 <= response.status < 300:
            raise from_upstream(UpstreamFailure(self.name, "models", response.status))
        try:
            return self.dialect.parse_models(response)
        except _MALFORMED as exc:
            raise transport_failure(self.name, "models", "protocol", type(exc).__name__) from None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.tokens is not None:
            await self.tokens.aclose()
