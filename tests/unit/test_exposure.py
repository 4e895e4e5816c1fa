"""Warnings for credentials a configuration would send in plain text."""

from __future__ import annotations

import pytest

from service.config import parse_config
from service.exposure import is_loopback, plaintext_credential_warnings, plaintext_host

ENV = {"K": "secret-value", "S": "x" * 40}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("model.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.5", False),
        ("ollama", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://10.0.0.5:8000/v1", "10.0.0.5"),
        ("HTTP://vllm.internal/v1", "vllm.internal"),
        ("http://[fd00::1]:8080", "fd00::1"),
        ("https://10.0.0.5/v1", None),
        ("http://127.0.0.1:11434", None),
        ("http://localhost:8000/v1", None),
        ("http://[::1]:8000", None),
        ("", None),
    ],
)
def test_plaintext_host(url: str, host: str | None) -> None:
    assert plaintext_host(url) == host


def _warnings(providers: str) -> list[str]:
    text = (
        f"auth: {{disabled: true}}\nproviders:\n{providers}"
        "models:\n  - {alias: m, provider: mock}\n"
    )
    return plaintext_credential_warnings(parse_config(text, ENV).config)


def test_a_key_sent_over_http_to_another_host_is_warned_about() -> None:
    providers = (
        "  - {name: mock, mock: {}}\n"
        "  - {name: vllm, api_key_env: K, base_url: 'http://10.0.0.5:8000/v1', openai_compatible: {}}\n"
        "  - {name: local, api_key_env: K, base_url: 'http://127.0.0.1:8000/v1', openai_compatible: {}}\n"
        "  - {name: tls, api_key_env: K, base_url: 'https://10.0.0.5/v1', openai_compatible: {}}\n"
        "  - {name: keyless, base_url: 'http://10.0.0.6:8000/v1', openai_compatible: {}}\n"
        "  - {name: unsent, api_key_env: K, base_url: 'http://10.0.0.6:8000/v1', openai_compatible: {auth_scheme: AUTH_SCHEME_NONE}}\n"
        "  - {name: header, api_key_env: K, base_url: 'http://10.0.0.8:8000/v1', openai_compatible: {auth_scheme: AUTH_SCHEME_HEADER, auth_header: x-key}}\n"
        "  - {name: openai, api_key_env: K, openai: {}}\n"
    )
    assert _warnings(providers) == [
        'provider "vllm": its API key would be sent over plain http:// to 10.0.0.5; use https://',
        'provider "header": its API key would be sent over plain http:// to 10.0.0.8; use https://',
    ]


def test_an_azure_entra_token_is_named_as_such() -> None:
    providers = (
        "  - {name: mock, mock: {}}\n"
        "  - name: az\n"
        "    api_key_env: S\n"
        "    base_url: 'http://az.internal'\n"
        "    azure_openai:\n"
        "      entra_client_credentials: {tenant_id: t, client_id: c}\n"
        "  - {name: az-key, api_key_env: K, base_url: 'http://az2.internal', azure_openai: {}}\n"
    )
    assert _warnings(providers) == [
        'provider "az": its Entra access token would be sent over plain http:// to '
        "az.internal; use https://",
        'provider "az-key": its API key would be sent over plain http:// to az2.internal; '
        "use https://",
    ]
