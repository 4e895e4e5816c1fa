"""Gemini on Google Cloud Vertex AI: the Gemini transforms (gemini_request.py,
gemini_response.py, gemini_errors.py) at Vertex AI URLs, with OAuth 2.0 access tokens of
a service account (google_auth.py).

URLs: `https://{location}-aiplatform.googleapis.com/{version}/projects/{project}/
locations/{location}/publishers/google/models/{model}:generateContent` (and
`:streamGenerateContent?alt=sse`, `:countTokens`, `:predict` for embeddings); the
`global` location is served by `https://aiplatform.googleapis.com`. Vertex AI's
countTokens takes the generateContent fields at the top level, and embeddings go
through `:predict` with `instances` of `{content}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, embed_pb2

from service.config_base import ConfigError
from service.errors import FieldViolation, invalid_argument
from service.providers import factory
from service.providers.base import Deployment, Provider
from service.providers.dialect import usage
from service.providers.gemini import GeminiDialect
from service.providers.gemini_request import chat_body, model_path
from service.providers.google_auth import ServiceAccountTokenSource, service_account
from service.providers.http import HttpRequestSpec, HttpResponse

DEFAULT_API_VERSION = "v1"
GLOBAL_HOST = "https://aiplatform.googleapis.com"
# Instances in one :predict call (text-embedding models take up to 250).
MAX_PREDICT_INSTANCES = 250


def host_for(location: str) -> str:
    """The Vertex AI endpoint of a location: regional, or the global one."""
    if location == "global":
        return GLOBAL_HOST
    return f"https://{location}-aiplatform.googleapis.com"


def base_url(host: str, api_version: str, project: str, location: str) -> str:
    """Where the publisher's models are: `.../projects/{p}/locations/{l}/publishers/google`."""
    return (
        f"{host.rstrip('/')}/{quote(api_version, safe='')}/projects/{quote(project, safe='')}"
        f"/locations/{quote(location, safe='')}/publishers/google"
    )


def predict_body(request: embed_pb2.EmbedRequest) -> dict[str, Any]:
    """The `:predict` body of a text embedding model."""
    if len(request.inputs) > MAX_PREDICT_INSTANCES:
        raise invalid_argument(
            [
                FieldViolation(
                    "inputs",
                    f"at most {MAX_PREDICT_INSTANCES} for a Vertex AI model (one :predict call);"
                    f" got {len(request.inputs)}",
                )
            ]
        )
    body: dict[str, Any] = {"instances": [{"content": text} for text in request.inputs]}
    if request.HasField("dimensions"):
        body["parameters"] = {"outputDimensionality": request.dimensions}
    return body


def parse_predict_body(body: Mapping[str, Any]) -> embed_pb2.EmbedResponse:
    embeddings = []
    tokens = 0
    for index, prediction in enumerate(body["predictions"]):
        values = prediction["embeddings"]["values"]
        statistics = prediction["embeddings"].get("statistics") or {}
        tokens += int(statistics.get("token_count") or 0)
        embeddings.append(embed_pb2.Embedding(index=index, values=[float(v) for v in values]))
    return embed_pb2.EmbedResponse(embeddings=embeddings, usage=usage(input_tokens=tokens))


class VertexDialect(GeminiDialect):
    kind = "vertex_ai"

    def count_tokens_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        body = chat_body(request)
        path = f"{model_path(deployment.upstream_model)}:countTokens"
        return HttpRequestSpec("POST", path, json_body=body)

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        path = f"{model_path(deployment.upstream_model)}:predict"
        return HttpRequestSpec("POST", path, predict_body(request))

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        body = json.loads(response.body)
        if not isinstance(body, Mapping):
            raise TypeError("the response is not a JSON object")
        result = parse_predict_body(body)
        result.route.upstream_request_id = response.headers.get(self.request_id_header, "")
        return result


def create_vertex(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    settings = config.vertex_ai
    where = "vertex_ai.credentials_file_env"
    path = environ.get(settings.credentials_file_env, "")
    if not path:
        raise ConfigError(
            where, f"the environment variable {settings.credentials_file_env} is not set"
        )
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as key_file:
            text = key_file.read()
    except OSError as exc:
        raise ConfigError(where, f"cannot read the key file it names: {exc.strerror}") from None
    account = service_account(text, where)
    tokens = ServiceAccountTokenSource(config.name, account)
    url = base_url(
        config.base_url or host_for(settings.location),
        settings.api_version or DEFAULT_API_VERSION,
        settings.project,
        settings.location,
    )
    # base_url above is complete; the transport settings must not replace it again.
    local = config_pb2.ProviderConfig()
    local.CopyFrom(config)
    local.base_url = url
    return factory.http_provider(local, VertexDialect(config.name), url, {}, tokens)
