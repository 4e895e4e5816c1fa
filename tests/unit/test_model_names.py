"""Upstream model names: each provider kind's rule, the path building of the kinds that
put the name in the URL, and the config errors for names outside the rule. Pure."""

from __future__ import annotations

import pytest
from llmgateway.v1 import chat_pb2, embed_pb2

from service.config import ConfigError, parse_config
from service.providers import model_names
from service.providers.azure import AzureOpenAIDialect
from service.providers.base import Capabilities, Deployment
from service.providers.gemini import GeminiDialect, model_path
from service.providers.model_names import rule_for
from tests.support import user

KINDS = ("openai", "openai_compatible", "azure_openai", "anthropic", "gemini", "ollama")
EVERY_KIND = (*KINDS, "mock", "custom")

HOSTILE = [
    "",
    ".",
    "..",
    "../admin",
    "../../../admin/secret",
    "a/../b",
    "a/./b",
    "/admin",
    "a/",
    "a//b",
    "%2e%2e",
    "%2e%2e%2fadmin",
    "a%2Fb",
    "a?b",
    "a#b",
    "a\r\nb",
    "a\n",
    "\ta",
    "a b",
    "a\\b",
    "a\x00b",
    "modèle",
    ".hidden",
    "-flag",
    "m" * 257,
]


@pytest.mark.parametrize("kind", EVERY_KIND)
@pytest.mark.parametrize("name", HOSTILE)
def test_every_kind_refuses_names_that_could_change_a_path(kind: str, name: str) -> None:
    problem = rule_for(kind).problem(name)
    assert problem is not None


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("openai", "gpt-4o-2024-08-06"),
        ("openai", "ft:gpt-4o-mini-2024-07-18:my-org:custom_suffix:7p4lURel"),
        ("azure_openai", "gpt-4o-deploy"),
        ("azure_openai", "gpt-4o.eu_1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-sonnet-20241022"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "models/gemini-2.5-flash"),
        ("gemini", "tunedModels/my-tune-1"),
        ("ollama", "llama3.2"),
        ("ollama", "llama3.2:3b"),
        ("ollama", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
        ("openai_compatible", "Qwen/Qwen2.5-7B-Instruct"),
        ("openai_compatible", "llama-3.2-1b-instruct-q4_k_m.gguf"),
        ("openai_compatible", "lmstudio-community/model@q4_k_m"),
        ("mock", "mock-echo-1"),
        ("custom", "shout-1"),
    ],
)
def test_real_model_names_fit_their_kind(kind: str, name: str) -> None:
    assert rule_for(kind).problem(name) is None


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("openai", "org/model"),
        ("azure_openai", "org/model"),
        ("azure_openai", "ft:model"),  # no ":" in Azure deployment names
        ("azure_openai", "d" * 65),
        ("anthropic", "org/model"),
        ("gemini", "org/model"),
        ("gemini", "models/org/model"),
        ("gemini", "models/"),
        ("gemini", "gemini:flash"),  # ":" would start the method part of the path
    ],
)
def test_kinds_without_namespaces_refuse_a_slash_and_their_own_extras(kind: str, name: str) -> None:
    assert rule_for(kind).problem(name) is not None


def test_the_problem_says_what_is_allowed_and_never_repeats_the_name() -> None:
    problem = rule_for("azure_openai").problem("../admin\r\n")
    assert problem is not None
    assert "letters, digits and . _ -" in problem and "at most 64" in problem
    assert "admin" not in problem and "\n" not in problem
    assert rule_for("openai").problem("m" * 129) == "is longer than 128 characters"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("gemini-2.5-flash", "gemini-2.5-flash"),
        ("a/b", "a%2Fb"),
        ("a?b#c", "a%3Fb%23c"),
        ("%2e%2e", "%252e%252e"),
        ("a\r\nb", "a%0D%0Ab"),
        ("a:b", "a%3Ab"),
        ("...", "..."),
    ],
)
def test_a_path_segment_is_encoded_whole(value: str, encoded: str) -> None:
    assert model_names.path_segment(value) == encoded


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_a_path_segment_is_never_a_step(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be a path segment"):
        model_names.path_segment(value)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("gemini-2.5-flash", "models/gemini-2.5-flash"),
        ("models/gemini-2.5-flash", "models/gemini-2.5-flash"),
        ("tunedModels/my-tune-1", "tunedModels/my-tune-1"),
        # Names outside the rule are refused before this; were one to get here, it
        # would still stay inside one segment.
        ("../../admin/secret", "models/..%2F..%2Fadmin%2Fsecret"),
        ("models/../admin", "models/..%2Fadmin"),
        ("x?key=1#f", "models/x%3Fkey%3D1%23f"),
    ],
)
def test_gemini_puts_the_model_in_one_segment_of_its_collection(model: str, path: str) -> None:
    assert model_path(model) == path


def _deployment(upstream_model: str) -> Deployment:
    return Deployment("a", "p", "kind", upstream_model, Capabilities(embeddings=True))


def test_gemini_requests_use_the_encoded_path_and_the_plain_resource_name() -> None:
    dialect = GeminiDialect("gem")
    request = chat_pb2.ChatRequest(model="a", messages=[user("hi")])
    spec = dialect.chat_request(request, _deployment("gemini-2.5-flash"), stream=True)
    assert spec.url == "models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    batch = embed_pb2.EmbedRequest(model="a", inputs=["x", "y"])
    spec = dialect.embed_request(batch, _deployment("tunedModels/t-1"))
    assert spec.url == "tunedModels/t-1:batchEmbedContents"
    assert spec.json_body is not None
    assert [r["model"] for r in spec.json_body["requests"]] == ["tunedModels/t-1"] * 2
    with pytest.raises(ValueError):
        dialect.chat_request(request, _deployment("models/.."), stream=False)


def test_azure_puts_the_deployment_and_api_version_in_one_segment_each() -> None:
    dialect = AzureOpenAIDialect("azure", "2024-10-21&x=1", v1_api=False)
    assert dialect.chat_path(_deployment("gpt-4o.eu_1")) == (
        "openai/deployments/gpt-4o.eu_1/chat/completions?api-version=2024-10-21%26x%3D1"
    )
    assert dialect.embeddings_path(_deployment("../../x?y#z")) == (
        "openai/deployments/..%2F..%2Fx%3Fy%23z/embeddings?api-version=2024-10-21%26x%3D1"
    )
    with pytest.raises(ValueError):
        dialect.chat_path(_deployment(".."))
    v1 = AzureOpenAIDialect("azure", "2024-10-21", v1_api=True)
    assert v1.chat_path(_deployment("..")) == "openai/v1/chat/completions"  # body, not path


CONFIG = """
auth: {{disabled: true}}
providers:
  - {{name: up, api_key_env: UP_KEY, base_url: "http://127.0.0.1:9", {kind}: {{}}}}
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: fine, provider: mock}}
{models}
"""


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("models", "path"),
    [
        ('  - {alias: bad, provider: up, upstream_model: "../admin"}', "models[1].upstream_model"),
        ('  - {alias: bad, provider: up, upstream_model: "a?b"}', "models[1].upstream_model"),
        ('  - {alias: bad, provider: up, upstream_model: "a\\r\\nb"}', "models[1].upstream_model"),
        ('  - {alias: "x/../y", provider: up}', "models[1].alias"),
        (
            "  - alias: pool\n    deployments:\n"
            "      - {provider: mock, upstream_model: fine-1}\n"
            '      - {provider: up, upstream_model: "%2e%2e"}',
            "models[1].deployments[1].upstream_model",
        ),
        (
            "  - alias: pool\n    deployments:\n"
            f"      - {{provider: up, upstream_model: {'m' * 300}}}",
            "models[1].deployments[0].upstream_model",
        ),
    ],
)
def test_a_configured_name_outside_the_rule_is_refused_with_its_field_path(
    kind: str, models: str, path: str
) -> None:
    text = CONFIG.format(kind=kind, models=models)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {"UP_KEY": "k"})
    assert caught.value.path == path
    assert f"for a {kind} provider" in caught.value.problem


def test_configured_names_inside_the_rule_load() -> None:
    text = CONFIG.format(
        kind="openai_compatible",
        models="  - {alias: qwen, provider: up, upstream_model: Qwen/Qwen2.5-7B-Instruct}",
    )
    loaded = parse_config(text, {"UP_KEY": "k"})
    assert loaded.config.models[1].upstream_model == "Qwen/Qwen2.5-7B-Instruct"
