"""Checks the `providers` section: unique names, one kind each, and each kind's own
settings (base URL, credentials by environment variable, transport limits, Entra,
custom class paths, mock faults). Used by service/providers/factory.py; called by the
loader in service/config.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "x-api-key", "x-goog-api-key", "proxy-authorization"}
)
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def check_providers(providers: Sequence[config_pb2.ProviderConfig]) -> None:
    """Raises ConfigError at the first problem in `providers` (at least one is required)."""
    if not providers:
        raise ConfigError("providers", "at least one provider is required")
    names: set[str] = set()
    for index, provider in enumerate(providers):
        path = f"providers[{index}]"
        if not provider.name:
            raise ConfigError(f"{path}.name", "is required")
        if not _NAME.match(provider.name):
            raise ConfigError(f"{path}.name", "use letters, digits, '-' and '_' (at most 63)")
        if provider.name in names:
            raise ConfigError(f"{path}.name", f'"{provider.name}" is used twice')
        names.add(provider.name)
        if provider.WhichOneof("kind") is None:
            raise ConfigError(path, "set exactly one provider kind (for example mock)")
        if provider.skip_if_key_missing and not provider.api_key_env:
            raise ConfigError(f"{path}.skip_if_key_missing", "needs api_key_env")
        _validate_provider_kind(provider, path)
        _validate_discovery(provider, path)


def _validate_provider_kind(provider: config_pb2.ProviderConfig, path: str) -> None:
    kind = provider.WhichOneof("kind")
    if kind != "mock":
        _validate_transport(provider, path)
    if kind in ("openai_compatible", "azure_openai", "ollama") and not provider.base_url:
        raise ConfigError(f"{path}.base_url", f"is required for {kind} providers")
    if kind in ("openai", "anthropic", "gemini", "azure_openai") and not provider.api_key_env:
        raise ConfigError(f"{path}.api_key_env", f"is required for {kind} providers")
    if kind == "openai_compatible":
        compat = provider.openai_compatible
        if compat.auth_scheme == config_pb2.AUTH_SCHEME_HEADER and not compat.auth_header:
            raise ConfigError(
                f"{path}.openai_compatible.auth_header", "is required with AUTH_SCHEME_HEADER"
            )
    if kind == "azure_openai" and provider.azure_openai.HasField("entra_client_credentials"):
        where = f"{path}.azure_openai.entra_client_credentials"
        credentials = provider.azure_openai.entra_client_credentials
        if provider.azure_openai.entra_token:
            raise ConfigError(where, "set either entra_token or entra_client_credentials")
        for name in ("tenant_id", "client_id"):
            if not getattr(credentials, name):
                raise ConfigError(f"{where}.{name}", "is required")
        authority = credentials.authority
        if authority and not (authority.startswith("https://") or _is_loopback_http(authority)):
            # The client secret goes there: plain HTTP only to this machine itself.
            raise ConfigError(f"{where}.authority", "must be an https URL")
    if kind == "vertex_ai":
        _validate_vertex(provider, f"{path}.vertex_ai")
        if provider.api_key_env:
            raise ConfigError(
                f"{path}.api_key_env",
                "is not used by vertex_ai providers: vertex_ai.credentials_file_env names"
                " the service account key file",
            )
    if kind == "gemini" and provider.base_url and provider.gemini.api_version:
        # The version is a path segment of the default host's URL; a base_url replaces
        # that URL whole, so the version would silently not be used.
        raise ConfigError(
            f"{path}.gemini.api_version",
            "is not used with base_url: end base_url with the version instead "
            "(for example .../v1beta)",
        )
    if kind == "custom" and not _CLASS_PATH.match(provider.custom.class_path):
        raise ConfigError(f"{path}.custom.class_path", 'must look like "package.module:ClassName"')
    if kind == "mock":
        mock = provider.mock
        if mock.HasField("embedding_dimensions") and not 1 <= mock.embedding_dimensions <= 4096:
            raise ConfigError(f"{path}.mock.embedding_dimensions", "must be 1 to 4096")
        status = mock.fault.http_status
        if status and not 400 <= status <= 599:
            raise ConfigError(f"{path}.mock.fault.http_status", "must be 400 to 599")


DISCOVERY_KINDS = ("openai", "openai_compatible", "ollama", "gemini")


def _validate_discovery(provider: config_pb2.ProviderConfig, path: str) -> None:
    if not provider.HasField("discovery"):
        return
    kind = provider.WhichOneof("kind")
    if kind not in DISCOVERY_KINDS:
        raise ConfigError(f"{path}.discovery", f"{kind} providers offer no model list to discover")
    if provider.discovery.HasField("refresh") and seconds_or(provider.discovery, "refresh", 0) < 1:
        raise ConfigError(f"{path}.discovery.refresh", "must be at least 1s")


_VERTEX_PROJECT = re.compile(r"^[a-z0-9][a-z0-9.:-]{0,62}$")
_VERTEX_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_VERTEX_VERSION = re.compile(r"^v[0-9][a-z0-9]{0,15}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate_vertex(provider: config_pb2.ProviderConfig, where: str) -> None:
    vertex = provider.vertex_ai
    if not _VERTEX_PROJECT.match(vertex.project):
        raise ConfigError(f"{where}.project", "is required: a Google Cloud project id")
    if not _VERTEX_LOCATION.match(vertex.location):
        raise ConfigError(
            f"{where}.location", 'is required: a region such as "us-central1", or "global"'
        )
    if not _ENV_NAME.match(vertex.credentials_file_env):
        raise ConfigError(
            f"{where}.credentials_file_env",
            "is required: the environment variable that names the service account key file",
        )
    if vertex.api_version and not _VERTEX_VERSION.match(vertex.api_version):
        raise ConfigError(f"{where}.api_version", 'must look like "v1" or "v1beta1"')


def _validate_transport(provider: config_pb2.ProviderConfig, path: str) -> None:
    if provider.base_url and not provider.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}.base_url", "must start with http:// or https://")
    for name in provider.headers:
        if name.lower() in _SECRET_HEADERS:
            raise ConfigError(
                f"{path}.headers.{name}", "credentials come from api_key_env, never from the file"
            )
    for name in ("connect", "read", "total"):
        if seconds_or(provider.timeouts, name, 1.0) <= 0:
            raise ConfigError(f"{path}.timeouts.{name}", "must be positive")
    pool = provider.pool
    if pool.HasField("max_connections") and pool.max_connections < 1:
        raise ConfigError(f"{path}.pool.max_connections", "must be at least 1")
    if pool.HasField("acquire_timeout") and seconds_or(pool, "acquire_timeout", 1.0) <= 0:
        raise ConfigError(f"{path}.pool.acquire_timeout", "must be positive")
    if provider.HasField("max_response_bytes") and provider.max_response_bytes < 1024:
        raise ConfigError(f"{path}.max_response_bytes", "must be at least 1024")


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
