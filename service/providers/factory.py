"""Builds HTTP providers from their configuration: transport settings, the API key from
the environment, and the dialect of the provider kind."""

from __future__ import annotations

from collections.abc import Mapping

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or
from service.providers.dialect import Dialect
from service.providers.http import DEFAULT_MAX_RESPONSE_BYTES, TransportSettings, UpstreamClient
from service.providers.http_provider import HttpProvider, TokenSource


def api_key(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> str:
    """The provider's key, read from the variable its config names ("" when none)."""
    return environ.get(config.api_key_env, "") if config.api_key_env else ""


def transport_settings(
    config: config_pb2.ProviderConfig, default_base_url: str, headers: Mapping[str, str]
) -> TransportSettings:
    pool = config.pool
    return TransportSettings(
        base_url=(config.base_url or default_base_url).rstrip("/") + "/",
        headers={**config.headers, **headers},
        max_connections=pool.max_connections if pool.HasField("max_connections") else 100,
        max_keepalive_connections=(
            pool.max_keepalive_connections if pool.HasField("max_keepalive_connections") else 20
        ),
        keepalive_expiry=seconds_or(pool, "keepalive_expiry", 30.0),
        acquire_timeout=seconds_or(pool, "acquire_timeout", 1.0),
        max_response_bytes=(
            config.max_response_bytes
            if config.HasField("max_response_bytes")
            else DEFAULT_MAX_RESPONSE_BYTES
        ),
    )


def http_provider(
    config: config_pb2.ProviderConfig,
    dialect: Dialect,
    default_base_url: str,
    headers: Mapping[str, str],
    tokens: TokenSource | None = None,
) -> HttpProvider:
    """An HttpProvider whose client sends `headers` (auth, versions) on every request,
    and the current credentials of `tokens` when given."""
    settings = transport_settings(config, default_base_url, headers)
    return HttpProvider(config.name, dialect, UpstreamClient(config.name, settings), tokens)
