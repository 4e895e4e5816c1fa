"""Credentials a configuration would send in plain text: warnings for start-up and
`check-config`.

A provider's API key (or the Entra access token a key or client secret stands for) sent
over plain `http://` to another host can be read by anyone on the path. Loopback
addresses (a local model server, a sidecar) are fine. JWKS URLs and Entra authorities
need no warning: configuration validation refuses plain http:// for them outright.
Pure: the caller decides where the warnings go.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from llmgateway.config.v1 import config_pb2


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, "localhost" and names under .localhost (RFC 6761)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_host(url: str) -> str | None:
    """The host of a plain http:// URL that leaves this machine, else None."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "http":
        return None
    host = parts.hostname or ""
    return None if is_loopback(host) else host


def _credential(provider: config_pb2.ProviderConfig) -> str:
    azure = provider.azure_openai
    if provider.WhichOneof("kind") == "azure_openai" and (
        azure.entra_token or azure.HasField("entra_client_credentials")
    ):
        return "Entra access token"
    return "API key"


def _sends_key(provider: config_pb2.ProviderConfig) -> bool:
    if not provider.api_key_env:
        return False
    compatible = provider.openai_compatible
    return not (
        provider.WhichOneof("kind") == "openai_compatible"
        and compatible.auth_scheme == config_pb2.AUTH_SCHEME_NONE
    )


def plaintext_credential_warnings(config: config_pb2.GatewayConfig) -> list[str]:
    """One sentence per provider that would send its credential over plain http:// to
    a host other than this one. A provider without base_url uses its kind's default:
    https://, or Ollama on localhost."""
    warnings: list[str] = []
    for provider in config.providers:
        if not _sends_key(provider):
            continue
        host = plaintext_host(provider.base_url)
        if host is not None:
            warnings.append(
                f'provider "{provider.name}": its {_credential(provider)} would be sent over '
                f"plain http:// to {host}; use https://"
            )
    return warnings
