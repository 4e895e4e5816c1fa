"""Google Gemini API (generativelanguage): the dialect and its factory.

Wire format: reference §5. `generateContent`, `streamGenerateContent?alt=sse` (SSE with
CRLF line ends, no terminator: the chunk with `finishReason` is the last content chunk),
`embedContent` / `batchEmbedContents`, errors as a google.rpc.Status in JSON.

The dialect only ties the transforms together: requests are built in gemini_request.py,
responses and stream chunks parsed in gemini_response.py, errors mapped in
gemini_errors.py. The request id is the `x-request-id` header when an upstream sends one,
else the body's `responseId`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, embed_pb2

from service.errors import GatewayError
from service.providers import factory
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser
from service.providers.gemini_errors import REQUEST_ID_HEADER, error_envelope, upstream_error
from service.providers.gemini_request import (
    MAX_BATCH_EMBED,
    chat_body,
    count_tokens_body,
    embed_body,
    model_path,
)
from service.providers.gemini_response import (
    GeminiStreamParser,
    parse_chat_body,
    parse_embed_body,
)
from service.providers.http import HttpRequestSpec, HttpResponse

__all__ = ["GeminiDialect", "create_gemini", "model_path"]

DEFAULT_HOST = "https://generativelanguage.googleapis.com/"
DEFAULT_API_VERSION = "v1beta"


def _json_object(response: HttpResponse) -> Mapping[str, Any]:
    body = json.loads(response.body)
    if not isinstance(body, Mapping):
        raise TypeError("the response is not a JSON object")
    return body


class GeminiDialect(Dialect):
    kind = "gemini"
    framing = "sse"
    request_id_header = REQUEST_ID_HEADER
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False, documents=True
    )
    default_context_window = 1_048_576
    max_embed_inputs = MAX_BATCH_EMBED  # batchEmbedContents' limit

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        body = chat_body(request, deployment.upstream_model, stream)
        model = model_path(deployment.upstream_model)
        url = f"{model}:streamGenerateContent?alt=sse" if stream else f"{model}:generateContent"
        return HttpRequestSpec("POST", url, json_body=body)

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        return parse_chat_body(_json_object(response), response.headers.get(REQUEST_ID_HEADER, ""))

    counts_tokens = True

    def count_tokens_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        model = model_path(deployment.upstream_model)
        body = count_tokens_body(request, deployment.upstream_model)
        return HttpRequestSpec("POST", f"{model}:countTokens", json_body=body)

    def parse_count_tokens(self, response: HttpResponse, deployment: Deployment) -> int:
        return int(_json_object(response).get("totalTokens") or 0)

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return GeminiStreamParser(self.provider, deployment.upstream_model)

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        try:
            envelope = error_envelope(json.loads(response.body))
        except ValueError:  # not JSON (an HTML page from a proxy), or not UTF-8
            envelope = None
        return upstream_error(
            self.provider,
            deployment.upstream_model,
            response.status,
            envelope,
            response.headers,
            now,
        )

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        model = model_path(deployment.upstream_model)
        body = embed_body(request, deployment.upstream_model)
        method = "embedContent" if len(request.inputs) == 1 else "batchEmbedContents"
        return HttpRequestSpec("POST", f"{model}:{method}", body)

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        result = parse_embed_body(_json_object(response))
        result.route.upstream_request_id = response.headers.get(REQUEST_ID_HEADER, "")
        return result

    def models_request(self) -> HttpRequestSpec | None:
        return HttpRequestSpec("GET", "models?pageSize=1000")

    def parse_models(self, response: HttpResponse) -> list[str]:
        """`models.list`: {"models": [{"name": "models/gemini-2.5-flash", ...}]}."""
        models = _json_object(response).get("models") or []
        return [str(item["name"]).removeprefix("models/") for item in models]


def create_gemini(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    key = factory.api_key(config, environ)
    headers = {"x-goog-api-key": key} if key else {}
    base_url = DEFAULT_HOST + (config.gemini.api_version or DEFAULT_API_VERSION)
    return factory.http_provider(config, GeminiDialect(config.name), base_url, headers)
