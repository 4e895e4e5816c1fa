"""Loads the YAML configuration into the typed GatewayConfig and validates all of it.

Any error names the field path (`providers[1].mock.token_delay`) so that the process
can exit before serving anything. Secrets are never in the file: providers name an
environment variable (`api_key_env`), which is checked here too.

This module is the loader: it reads the YAML, walks it against the schema
(service/config_schema.py), and `validate` runs each section's checks, which live
beside the code that uses the section (service/auth/config_checks.py,
service/limits/config_checks.py, service/routing/config_checks.py and so on).
`ConfigError` and `seconds_or` come from service/config_base.py and are importable here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2

from service.audit.config_checks import check_audit
from service.auth.config_checks import check_auth
from service.config_base import ConfigError, seconds_or
from service.config_schema import check_message
from service.limits.config_checks import check_limits
from service.providers.config_checks import check_providers
from service.routing.config_checks import check_cache, check_routing
from service.routing.model_checks import check_fallbacks, check_models
from service.routing.rate_limit_checks import check_rate_limits
from service.server_config_checks import check_logging, check_server, check_shedding, check_tls
from service.shared_store.config_checks import check_shared_store
from service.tracing_config_checks import check_tracing
from service.workers.config_checks import check_workers

__all__ = [
    "ConfigError",
    "LoadedConfig",
    "load_config",
    "parse_config",
    "seconds_or",
    "validate",
]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration, with the providers left out for missing keys."""

    config: config_pb2.GatewayConfig
    skipped_providers: tuple[str, ...]
    # The configuration as written (validated), skipped providers and their models
    # included: they stay visible in ListModels and GetProviderStats as key missing.
    as_written: config_pb2.GatewayConfig | None = None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Reads, parses and validates a configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_config(text, os.environ if environ is None else environ)


class _Loader(yaml.SafeLoader):
    """YAML without timestamps: `api_version: 2024-10-21` stays the string it looks like."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_config(text: str, environ: Mapping[str, str]) -> LoadedConfig:
    """Parses and validates configuration text; `environ` holds the named secrets."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise ConfigError("", "the file must hold a mapping with providers and models")
    config = config_pb2.GatewayConfig()
    check_message(data, config.DESCRIPTOR, "")
    json_format.ParseDict(data, config)
    validate(config, environ)
    return _drop_providers_without_keys(config, environ)


def validate(config: config_pb2.GatewayConfig, environ: Mapping[str, str]) -> None:
    """Runs every section's checks, in this order, and raises the first ConfigError."""
    check_server(config.server)
    check_logging(config.logging)
    check_providers(config.providers)
    check_routing(config.routing, config.providers)
    check_shedding(config.server)
    check_tls(config.server.tls)
    check_models(config.models, config.providers)
    check_rate_limits(config.models, config.providers)
    check_auth(config.auth, environ)
    check_limits(config.limits, config.auth, environ)
    check_shared_store(config, environ)
    check_tracing(config.tracing)
    check_cache(config.cache)
    check_audit(config.audit)
    check_fallbacks(config.models)
    check_workers(config)


def _drop_providers_without_keys(
    config: config_pb2.GatewayConfig, environ: Mapping[str, str]
) -> LoadedConfig:
    skipped: list[str] = []
    for index, provider in enumerate(config.providers):
        if provider.api_key_env and not environ.get(provider.api_key_env):
            if not provider.skip_if_key_missing:
                raise ConfigError(
                    f"providers[{index}].api_key_env",
                    f"environment variable {provider.api_key_env} is not set",
                )
            skipped.append(provider.name)
    if not skipped:
        return LoadedConfig(config, ())
    kept = config_pb2.GatewayConfig()
    kept.CopyFrom(config)
    del kept.providers[:]
    kept.providers.extend(p for p in config.providers if p.name not in skipped)
    del kept.models[:]
    for model in config.models:
        if model.deployments:
            targets = [t for t in model.deployments if t.provider not in skipped]
            if targets:
                trimmed = kept.models.add()
                trimmed.CopyFrom(model)
                del trimmed.deployments[:]
                trimmed.deployments.extend(targets)
        elif model.provider not in skipped:
            kept.models.add().CopyFrom(model)
    remaining = {m.alias for m in kept.models}
    for model in kept.models:
        for field in (model.fallbacks, model.context_fallbacks):
            kept_aliases = [alias for alias in field if alias in remaining]
            del field[:]
            field.extend(kept_aliases)
    if not kept.providers or not kept.models:
        raise ConfigError(
            "providers", "no provider is left: every one was skipped for a missing API key"
        )
    return LoadedConfig(kept, tuple(skipped), config)
