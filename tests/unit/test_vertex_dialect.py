"""Vertex AI: the Gemini transforms at Vertex URLs (golden both ways), the predict
embeddings, regional and global endpoints, the service account key file and the signed
JWT bearer assertion."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from service.config import ConfigError, parse_config
from service.providers.base import Capabilities, Deployment
from service.providers.gemini import GeminiDialect
from service.providers.google_auth import (
    CLOUD_PLATFORM_SCOPE,
    ServiceAccountTokenSource,
    assertion,
    service_account,
)
from service.providers.http import HttpResponse
from service.providers.http_provider import HttpProvider
from service.providers.registry import factory_for
from service.providers.vertex import VertexDialect
from tests.fakes.vertex_fake import ServiceAccountKey

DEPLOYMENT = Deployment(
    alias="g",
    provider="vertex",
    provider_type="vertex_ai",
    upstream_model="gemini-2.5-flash",
    capabilities=Capabilities(vision=True),
)
EMBED = Deployment(
    alias="e",
    provider="vertex",
    provider_type="vertex_ai",
    upstream_model="text-embedding-005",
    capabilities=Capabilities(embeddings=True),
)
ACCOUNT = ServiceAccountKey()


def request() -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(
        model="g",
        messages=[
            content_pb2.Message(
                role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text="Brief.")]
            ),
            content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="Hi")]),
        ],
        generation_config=chat_pb2.GenerationConfig(max_output_tokens=64, top_k=3),
    )


def test_requests_are_gemini_bodies_at_vertex_paths() -> None:
    vertex, gemini = VertexDialect("vertex"), GeminiDialect("gemini")
    for stream, path in (
        (False, "models/gemini-2.5-flash:generateContent"),
        (True, "models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ):
        spec = vertex.chat_request(request(), DEPLOYMENT, stream=stream)
        assert spec.url == path
        assert spec.json_body == gemini.chat_request(request(), DEPLOYMENT, stream).json_body
    count = vertex.count_tokens_request(request(), DEPLOYMENT)
    assert count.url == "models/gemini-2.5-flash:countTokens"
    assert count.json_body == {
        "systemInstruction": {"parts": [{"text": "Brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"topK": 3, "maxOutputTokens": 64},
    }
    assert (
        vertex.parse_count_tokens(
            HttpResponse(200, {}, b'{"totalTokens": 31, "totalBillableCharacters": 96}'), DEPLOYMENT
        )
        == 31
    )


def test_responses_parse_as_gemini_ones() -> None:
    body = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {
            "promptTokenCount": 9,
            "cachedContentTokenCount": 4,
            "candidatesTokenCount": 1,
            "totalTokenCount": 10,
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
    }
    response = HttpResponse(200, {}, json.dumps(body).encode())
    parsed = VertexDialect("vertex").parse_chat(response, DEPLOYMENT)
    assert parsed == GeminiDialect("gemini").parse_chat(response, DEPLOYMENT)
    assert parsed.message.parts[0].text == "Hello"
    assert (parsed.usage.input_tokens, parsed.usage.cached_input_tokens) == (9, 4)
    assert parsed.route.upstream_request_id == "resp-1"


def test_embeddings_through_predict() -> None:
    dialect = VertexDialect("vertex")
    spec = dialect.embed_request(
        embed_pb2.EmbedRequest(model="e", inputs=["a", "b c"], dimensions=3), EMBED
    )
    assert spec.url == "models/text-embedding-005:predict"
    assert spec.json_body == {
        "instances": [{"content": "a"}, {"content": "b c"}],
        "parameters": {"outputDimensionality": 3},
    }
    body = {
        "predictions": [
            {
                "embeddings": {
                    "values": [0.1, 0.2],
                    "statistics": {"token_count": 1, "truncated": False},
                }
            },
            {
                "embeddings": {
                    "values": [0.3, 0.4],
                    "statistics": {"token_count": 2, "truncated": False},
                }
            },
        ]
    }
    parsed = dialect.parse_embed(HttpResponse(200, {}, json.dumps(body).encode()), EMBED)
    assert [list(e.values) for e in parsed.embeddings] == [
        pytest.approx([0.1, 0.2]),
        pytest.approx([0.3, 0.4]),
    ]
    assert parsed.usage.input_tokens == 3


def key_config(
    tmp_path: Path, location: str, token_uri: str = "https://oauth2.googleapis.com/token"
) -> tuple[config_pb2.ProviderConfig, dict[str, str]]:
    key_file = tmp_path / "key.json"
    key_file.write_text(ACCOUNT.key_file(token_uri))
    config = config_pb2.ProviderConfig(
        name="vertex",
        vertex_ai=config_pb2.VertexAIProviderConfig(
            project="my-project", location=location, credentials_file_env="KEY_FILE"
        ),
    )
    return config, {"KEY_FILE": str(key_file)}


@pytest.mark.parametrize(
    ("location", "base"),
    [
        (
            "europe-west4",
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/my-project"
            "/locations/europe-west4/publishers/google/",
        ),
        (
            "global",
            "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global"
            "/publishers/google/",
        ),
    ],
)
async def test_regional_and_global_endpoints(tmp_path: Path, location: str, base: str) -> None:
    config, environ = key_config(tmp_path, location)
    provider = factory_for("vertex_ai")(config, environ)
    assert isinstance(provider, HttpProvider)
    assert provider.kind == "vertex_ai" and provider.counts_tokens
    assert provider.default_capabilities.documents
    assert provider.client.settings.base_url == base
    assert "x-goog-api-key" not in provider.client.settings.headers
    assert isinstance(provider.tokens, ServiceAccountTokenSource)
    await provider.aclose()


def test_the_assertion_is_a_signed_jwt_bearer_grant() -> None:
    account = service_account(ACCOUNT.key_file("https://oauth2.googleapis.com/token"), "k")
    token = assertion(account, 1_767_225_600.0)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "key-1", "typ": "JWT"}
    claims = jwt.decode(
        token,
        ACCOUNT.pair.public,
        algorithms=["RS256"],
        audience="https://oauth2.googleapis.com/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": ACCOUNT.client_email,
        "scope": CLOUD_PLATFORM_SCOPE,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_767_225_600,
        "exp": 1_767_225_600 + 3600,
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        (json.dumps({"type": "authorized_user"}), "not a service account key"),
        (json.dumps({"type": "service_account", "client_email": "a@b"}), "no private_key"),
        (
            ACCOUNT.key_file("http://oauth2.example.com/token"),
            "token_uri must be an https URL",
        ),
        (
            json.dumps(
                {
                    "type": "service_account",
                    "client_email": "a@b",
                    "private_key": "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n",
                    "token_uri": "https://oauth2.googleapis.com/token",
                }
            ),
            "not an RSA private key",
        ),
    ],
)
def test_unusable_key_files_are_config_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        service_account(text, "vertex_ai.credentials_file_env")
    assert caught.value.path == "vertex_ai.credentials_file_env"
    assert problem in caught.value.problem
    assert "PRIVATE KEY" not in str(caught.value)


def test_a_missing_key_file_names_the_field(tmp_path: Path) -> None:
    config, _ = key_config(tmp_path, "us-central1")
    with pytest.raises(ConfigError) as unset:
        factory_for("vertex_ai")(config, {})
    assert unset.value.path == "vertex_ai.credentials_file_env"
    with pytest.raises(ConfigError) as unreadable:
        factory_for("vertex_ai")(config, {"KEY_FILE": str(tmp_path / "absent.json")})
    assert "cannot read" in unreadable.value.problem


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ("{location: us-central1, credentials_file_env: K}", "providers[0].vertex_ai.project"),
        ("{project: p-1, credentials_file_env: K}", "providers[0].vertex_ai.location"),
        ("{project: p-1, location: us-central1}", "providers[0].vertex_ai.credentials_file_env"),
        (
            "{project: p-1, location: us-central1, credentials_file_env: K, api_version: 'x/y'}",
            "providers[0].vertex_ai.api_version",
        ),
    ],
)
def test_vertex_settings_are_checked(settings: str, path: str) -> None:
    text = (
        f"providers:\n  - {{name: v, vertex_ai: {settings}}}\nmodels: [{{alias: a, provider: v}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == path


def test_an_api_key_is_refused_for_vertex() -> None:
    text = (
        "providers:\n  - {name: v, api_key_env: K, vertex_ai: {project: p-1,"
        " location: us-central1, credentials_file_env: F}}\nmodels: [{alias: a, provider: v}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {"K": "x"})
    assert caught.value.path == "providers[0].api_key_env"
