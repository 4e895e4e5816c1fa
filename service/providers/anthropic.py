"""Anthropic Messages (reference §4): the dialect and its factory.

The dialect only ties the transforms together: the request is built in
anthropic_request.py, responses and stream events parsed in anthropic_response.py, errors
mapped in anthropic_errors.py. The request id is the `request-id` header, else the error
body's `request_id`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2

from service.errors import GatewayError
from service.providers import factory
from service.providers.anthropic_errors import upstream_failure
from service.providers.anthropic_request import chat_body, count_tokens_body
from service.providers.anthropic_response import AnthropicStreamParser, parse_chat_body
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.upstream_errors import from_upstream

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


class AnthropicDialect(Dialect):
    kind = "anthropic"
    framing = "sse"
    request_id_header = "request-id"
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False, documents=True
    )
    default_context_window = 200_000

    def __init__(self, provider: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        super().__init__(provider)
        self.default_max_tokens = default_max_tokens

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        body = chat_body(request, deployment.upstream_model, self.default_max_tokens, stream)
        return HttpRequestSpec("POST", "messages", json_body=body)

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        return parse_chat_body(json.loads(response.body))

    counts_tokens = True

    def count_tokens_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        body = count_tokens_body(request, deployment.upstream_model, self.default_max_tokens)
        return HttpRequestSpec("POST", "messages/count_tokens", json_body=body)

    def parse_count_tokens(self, response: HttpResponse, deployment: Deployment) -> int:
        return int(json.loads(response.body)["input_tokens"])

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return AnthropicStreamParser(self.provider, deployment.upstream_model)

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        try:
            envelope: Any = json.loads(response.body)
        except ValueError:  # a CDN page (413, 502) or an empty body
            envelope = None
        return from_upstream(
            upstream_failure(
                self.provider,
                deployment.upstream_model,
                response.status,
                envelope,
                response.headers,
                now,
            )
        )


def create_anthropic(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    settings = config.anthropic
    headers: dict[str, str] = {"anthropic-version": settings.version or DEFAULT_VERSION}
    key = factory.api_key(config, environ)
    if key:
        headers["x-api-key"] = key
    if settings.betas:
        headers["anthropic-beta"] = ",".join(settings.betas)
    max_tokens = (
        settings.default_max_tokens
        if settings.HasField("default_max_tokens")
        else DEFAULT_MAX_TOKENS
    )
    dialect = AnthropicDialect(config.name, max_tokens)
    return factory.http_provider(config, dialect, DEFAULT_BASE_URL, headers)
