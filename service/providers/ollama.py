"""Ollama's native API (reference §6): `POST api/chat` and `POST api/embed`, NDJSON streams.

The dialect only ties the transforms together: requests are built in ollama_request.py,
responses and stream lines parsed in ollama_response.py, errors mapped in
ollama_errors.py. An `{"error": ...}` body sent with a 2xx status is an error too.
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
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.ollama_errors import http_error
from service.providers.ollama_request import chat_body, embed_body, go_duration
from service.providers.ollama_response import (
    OllamaStreamParser,
    call_id,
    parse_chat_body,
    parse_embed_body,
)

__all__ = ["OllamaDialect", "call_id", "create_ollama", "go_duration"]

DEFAULT_BASE_URL = "http://localhost:11434"
CHAT_PATH = "api/chat"
EMBED_PATH = "api/embed"
TAGS_PATH = "api/tags"


class OllamaDialect(Dialect):
    kind = "ollama"
    framing = "ndjson"
    request_id_header = "x-request-id"
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False
    )

    def __init__(self, provider: str, keep_alive: str | None = None) -> None:
        super().__init__(provider)
        self.keep_alive = keep_alive

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        body = chat_body(request, deployment, stream, self.keep_alive)
        return HttpRequestSpec("POST", CHAT_PATH, json_body=body)

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        body = embed_body(request, deployment.upstream_model, self.keep_alive)
        return HttpRequestSpec("POST", EMBED_PATH, json_body=body)

    def models_request(self) -> HttpRequestSpec | None:
        return HttpRequestSpec("GET", TAGS_PATH)

    def parse_models(self, response: HttpResponse) -> list[str]:
        """`GET /api/tags`: {"models": [{"name": "llama3.2:latest", "model": ...}]}."""
        return [str(item["name"]) for item in json.loads(response.body)["models"]]

    def _body(self, response: HttpResponse, deployment: Deployment) -> dict[str, Any]:
        data = json.loads(response.body.decode("utf-8"))
        if not isinstance(data, dict):
            raise TypeError("the response is not a JSON object")
        if "error" in data:
            # An error envelope with a 2xx status: no clock here, so only text hints.
            raise self._http_error(
                HttpResponse(502, response.headers, response.body), deployment, None
            )
        return data

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        return parse_chat_body(self._body(response, deployment), deployment.upstream_model)

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return OllamaStreamParser(self.provider, deployment.upstream_model)

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        return parse_embed_body(self._body(response, deployment))

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        return self._http_error(response, deployment, now)

    def _http_error(
        self, response: HttpResponse, deployment: Deployment, now: float | None
    ) -> GatewayError:
        return http_error(
            self.provider, deployment.upstream_model, response, self.request_id_header, now
        )


def create_ollama(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    """Ollama needs no key locally; with api_key_env (ollama.com, or an auth proxy in
    front of a server) the key is sent as `Authorization: Bearer`."""
    key = factory.api_key(config, environ)
    headers = {"Authorization": f"Bearer {key}"} if config.api_key_env and key else {}
    settings = config.ollama
    keep_alive = go_duration(settings.keep_alive) if settings.HasField("keep_alive") else None
    dialect = OllamaDialect(config.name, keep_alive=keep_alive)
    return factory.http_provider(config, dialect, DEFAULT_BASE_URL, headers)
