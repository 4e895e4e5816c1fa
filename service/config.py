"""Loads the YAML configuration into the typed GatewayConfig and validates all of it.

Any error names the field path (`providers[1].mock.token_delay`) so that the process
can exit before serving anything. Secrets are never in the file: providers name an
environment variable (`api_key_env`), which is checked here too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from google.protobuf import descriptor, json_format, message, message_factory
from llmgateway.config.v1 import config_pb2

from service.auth.algorithms import ASYMMETRIC, SYMMETRIC
from service.providers.model_names import rule_for

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration problem at one field path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration, with the providers left out for missing keys."""

    config: config_pb2.GatewayConfig
    skipped_providers: tuple[str, ...]


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
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise ConfigError("", "the file must hold a mapping with providers and models")
    config = config_pb2.GatewayConfig()
    _check_message(data, config.DESCRIPTOR, "")
    json_format.ParseDict(data, config)
    _validate(config, environ)
    _validate_fallbacks(config)
    return _drop_providers_without_keys(config, environ)


# --- structure: every key and value checked with its path --------------------------


def _check_message(data: object, desc: descriptor.Descriptor, path: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping")
    fields = {f.name: f for f in desc.fields}
    fields.update({f.json_name: f for f in desc.fields})
    oneofs_seen: dict[str, str] = {}
    for key, value in data.items():
        child = f"{path}.{key}" if path else str(key)
        field = fields.get(str(key))
        if field is None:
            known = ", ".join(f.name for f in desc.fields)
            raise ConfigError(child, f"unknown field (known: {known})")
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs_seen:
                raise ConfigError(child, f"only one of {oneof.name} may be set")
            oneofs_seen[oneof.name] = field.name
        _check_field(value, field, desc, child)


def _check_field(
    value: object, field: descriptor.FieldDescriptor, parent: descriptor.Descriptor, path: str
) -> None:
    if value is None:
        raise ConfigError(path, "must not be empty")
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise ConfigError(path, "must be a mapping")
        value_type = field.message_type.fields_by_name["value"].message_type
        for key, item in value.items():
            if value_type is not None:
                _check_message(item, value_type, f"{path}.{key}")
            elif not isinstance(item, str | int | float | bool):
                raise ConfigError(f"{path}.{key}", "must be a single value")
        return
    if _is_repeated(field):
        if not isinstance(value, list):
            raise ConfigError(path, "must be a list")
        for index, item in enumerate(value):
            _check_single(item, field, parent, f"{path}[{index}]")
        return
    _check_single(value, field, parent, path)


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _check_single(
    value: object, field: descriptor.FieldDescriptor, parent: descriptor.Descriptor, path: str
) -> None:
    msg_type = field.message_type
    if msg_type is not None and not msg_type.full_name.startswith("google.protobuf."):
        _check_message(value, msg_type, path)
        return
    if value is None:
        raise ConfigError(path, "must not be empty")
    # Scalars and well-known types (Duration): let protobuf parse one value alone.
    probe: dict[str, Any] = {field.name: [value] if _is_repeated(field) else value}
    holder: message.Message = message_factory.GetMessageClass(parent)()
    try:
        json_format.ParseDict(probe, holder)
    except json_format.ParseError as exc:
        raise ConfigError(path, _plain_reason(str(exc), field)) from exc


def _plain_reason(text: str, field: descriptor.FieldDescriptor) -> str:
    reason = text.rsplit("field: ", 1)[-1].split(" at ", 1)[0].rstrip(".")
    if field.message_type is not None and field.message_type.full_name.endswith("Duration"):
        return f'must be a duration such as "30s" or "0.5s" ({reason})'
    return reason


# --- meaning: references, ranges, names --------------------------------------------


def _validate_auth(auth: config_pb2.AuthConfig, environ: Mapping[str, str]) -> None:
    _validate_issuer_authorization(auth)
    if auth.disabled:
        return
    if not auth.issuers:
        raise ConfigError("auth", "configure at least one issuer, or set disabled: true")
    if seconds_or(auth, "leeway", 0.0) > 300 or seconds_or(auth, "leeway", 0.0) < 0:
        raise ConfigError("auth.leeway", "must be 0 to 300s")
    if auth.HasField("max_token_bytes") and not 256 <= auth.max_token_bytes <= 65536:
        raise ConfigError("auth.max_token_bytes", "must be 256 to 65536")
    for k, method in enumerate(auth.exempt_methods):
        if not _FULL_METHOD.match(method):
            raise ConfigError(
                f"auth.exempt_methods[{k}]", 'must be a full name "/pkg.Service/Method"'
            )
    for method in auth.authorization.method_scopes:
        if not _FULL_METHOD.match(method):
            raise ConfigError(
                f"auth.authorization.method_scopes.{method}",
                'keys are full names "/pkg.Service/Method"',
            )
    seen: set[str] = set()
    for index, issuer in enumerate(auth.issuers):
        path = f"auth.issuers[{index}]"
        if not issuer.issuer:
            raise ConfigError(f"{path}.issuer", "is required")
        if issuer.issuer in seen:
            raise ConfigError(f"{path}.issuer", f'"{issuer.issuer}" is configured twice')
        seen.add(issuer.issuer)
        if not issuer.audiences:
            raise ConfigError(f"{path}.audiences", "at least one audience is required")
        if issuer.required_typ and not _MEDIA_TYPE.fullmatch(issuer.required_typ):
            raise ConfigError(f"{path}.required_typ", 'must be a media type such as "at+jwt"')
        algorithms = set(issuer.algorithms)
        if not algorithms:
            raise ConfigError(f"{path}.algorithms", "at least one algorithm is required")
        unknown = algorithms - SYMMETRIC - ASYMMETRIC
        if unknown:
            raise ConfigError(f"{path}.algorithms", f"not supported: {', '.join(sorted(unknown))}")
        if algorithms & SYMMETRIC and algorithms & ASYMMETRIC:
            raise ConfigError(
                f"{path}.algorithms", "symmetric (HS*) and asymmetric algorithms cannot be mixed"
            )
        if algorithms <= SYMMETRIC:
            if not issuer.secret_env:
                raise ConfigError(f"{path}.secret_env", "is required with HS* algorithms")
            if not environ.get(issuer.secret_env):
                raise ConfigError(
                    f"{path}.secret_env", f"environment variable {issuer.secret_env} is not set"
                )
            if issuer.public_keys or issuer.jwks_url:
                raise ConfigError(path, "HS* issuers take a secret, not public keys")
            continue
        if issuer.secret_env:
            raise ConfigError(f"{path}.secret_env", "asymmetric issuers take public keys")
        if not issuer.public_keys and not issuer.jwks_url:
            raise ConfigError(path, "set public_keys or jwks_url")
        if issuer.jwks_url and not _secure_or_loopback(issuer.jwks_url):
            raise ConfigError(f"{path}.jwks_url", "must be https (http only on loopback)")


def _validate_issuer_authorization(auth: config_pb2.AuthConfig) -> None:
    issuers = {issuer.issuer for issuer in auth.issuers}
    for issuer, scoped in auth.authorization.issuers.items():
        path = f"auth.authorization.issuers.{issuer}"
        if auth.disabled or issuer not in issuers:
            raise ConfigError(
                path,
                "authentication is disabled: no token names a tenant"
                if auth.disabled
                else "is not one of auth.issuers (give the issuer's exact iss)",
            )
        for tenant in scoped.tenant_models:
            if not tenant:
                raise ConfigError(f"{path}.tenant_models", "tenant names must not be empty")


def _secure_or_loopback(url: str) -> bool:
    if url.startswith("https://"):
        return True
    host = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)[0]
    return url.startswith("http://") and host in ("127.0.0.1", "localhost", "[::1]")


def _validate_tls(tls: config_pb2.TlsConfig) -> None:
    if not (tls.cert_file or tls.key_file or tls.client_ca_file):
        return
    for name in ("cert_file", "key_file", "client_ca_file"):
        value = getattr(tls, name)
        if name != "client_ca_file" and not value:
            raise ConfigError(f"server.tls.{name}", "is required for TLS")
        if value and not Path(value).is_file():
            raise ConfigError(f"server.tls.{name}", f"no readable file at {value}")


def _validate(config: config_pb2.GatewayConfig, environ: Mapping[str, str]) -> None:
    server = config.server
    if server.HasField("port") and server.port > 65535:
        raise ConfigError("server.port", "must be at most 65535")
    for name in ("shutdown_grace", "max_call_duration"):
        if seconds_or(server, name, 1.0) <= 0:
            raise ConfigError(f"server.{name}", "must be positive")
    sizes = {
        "max_receive_message_bytes": server.HasField("max_receive_message_bytes"),
        "max_send_message_bytes": server.HasField("max_send_message_bytes"),
    }
    for name, present in sizes.items():
        if present and getattr(server, name) < 1024:
            raise ConfigError(f"server.{name}", "must be at least 1024")
    level = config.logging.level
    if level and level not in _LOG_LEVELS:
        raise ConfigError("logging.level", f"must be one of {', '.join(_LOG_LEVELS)}")

    if not config.providers:
        raise ConfigError("providers", "at least one provider is required")
    names: set[str] = set()
    for index, provider in enumerate(config.providers):
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

    _validate_routing(config.routing.retry, config.routing.breaker, "routing")
    _validate_quota_cool_down(config.routing, "routing")
    for index, provider in enumerate(config.providers):
        _validate_routing(provider.retry, provider.breaker, f"providers[{index}]")
        _validate_quota_cool_down(provider, f"providers[{index}]")
    if config.server.max_in_flight and seconds_or(config.server, "shed_retry_after", 1.0) <= 0:
        raise ConfigError("server.shed_retry_after", "must be positive")

    _validate_tls(config.server.tls)

    if not config.models:
        raise ConfigError("models", "at least one model is required")
    aliases: set[str] = set()
    for index, model in enumerate(config.models):
        path = f"models[{index}]"
        if not model.alias:
            raise ConfigError(f"{path}.alias", "is required")
        if not _ALIAS.match(model.alias):
            raise ConfigError(f"{path}.alias", "use letters, digits and . _ : / - (at most 128)")
        if model.alias in aliases:
            raise ConfigError(f"{path}.alias", f'"{model.alias}" is used twice')
        aliases.add(model.alias)
        _validate_model_targets(model, names, path)
        _validate_upstream_models(model, config.providers, path)
        if model.HasField("cache") and seconds_or(model.cache, "ttl", 0.0) <= 0:
            raise ConfigError(f"{path}.cache.ttl", "is required and must be positive")
        if model.timeouts.ByteSize():
            for name in ("connect", "read", "total", "first_token", "idle"):
                if seconds_or(model.timeouts, name, 1.0) <= 0:
                    raise ConfigError(f"{path}.timeouts.{name}", "must be positive")
        if model.HasField("pricing"):
            prices = model.pricing
            for name in (
                "input_per_million",
                "cached_input_per_million",
                "cache_write_input_per_million",
                "output_per_million",
            ):
                if getattr(prices, name) < 0:
                    raise ConfigError(f"{path}.pricing.{name}", "must not be negative")
    _validate_auth(config.auth, environ)
    _validate_limits(config.limits, config.auth, environ)
    _validate_tracing(config.tracing)
    cache = config.cache
    if cache.HasField("max_entries") and cache.max_entries < 1:
        raise ConfigError("cache.max_entries", "must be at least 1")
    if cache.HasField("max_bytes") and cache.max_bytes < 1024:
        raise ConfigError("cache.max_bytes", "must be at least 1024")
    if config.audit.HasField("queue_size") and config.audit.queue_size < 1:
        raise ConfigError("audit.queue_size", "must be at least 1")


def _validate_limits(
    limits: config_pb2.LimitsConfig, auth: config_pb2.AuthConfig, environ: Mapping[str, str]
) -> None:
    if limits.HasField("redis"):
        _validate_redis(limits.redis, environ)
    entries: list[tuple[str, config_pb2.LimitConfig]] = [
        ("limits.subject", limits.subject),
        ("limits.tenant", limits.tenant),
    ]
    scopes: list[tuple[str, message.Message]] = [("limits", limits)]
    issuers = {issuer.issuer for issuer in auth.issuers}
    for issuer, scoped in limits.issuers.items():
        path = f"limits.issuers.{issuer}"
        if auth.disabled or issuer not in issuers:
            raise ConfigError(
                path,
                "authentication is disabled: every caller is the anonymous subject"
                if auth.disabled
                else "is not one of auth.issuers (give the issuer's exact iss)",
            )
        scopes.append((path, scoped))
    for prefix, holder in scopes:
        for kind in ("subjects", "tenants"):
            for name, limit in getattr(holder, kind).items():
                if not name:
                    raise ConfigError(f"{prefix}.{kind}", "names must not be empty")
                entries.append((f"{prefix}.{kind}.{name}", limit))
    for path, limit in entries:
        if not math.isfinite(limit.budget_usd) or limit.budget_usd < 0:
            raise ConfigError(f"{path}.budget_usd", "must be a positive amount (or 0 for none)")


def _validate_tracing(tracing: config_pb2.TracingConfig) -> None:
    if tracing.otlp_endpoint and urlsplit(tracing.otlp_endpoint).scheme not in ("http", "https"):
        raise ConfigError("tracing.otlp_endpoint", "must be an http(s) URL")
    if tracing.HasField("sample_ratio") and not 0.0 <= tracing.sample_ratio <= 1.0:
        raise ConfigError("tracing.sample_ratio", "must be from 0 to 1")
    if tracing.HasField("export_delay") and seconds_or(tracing, "export_delay", 0.0) <= 0:
        raise ConfigError("tracing.export_delay", "must be positive")


def _validate_redis(redis: config_pb2.RedisStoreConfig, environ: Mapping[str, str]) -> None:
    path = "limits.redis"
    if not redis.url_env:
        raise ConfigError(f"{path}.url_env", "is required (the variable that holds the URL)")
    url = environ.get(redis.url_env, "")
    if not url:
        raise ConfigError(f"{path}.url_env", f"environment variable {redis.url_env} is not set")
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix"):
        # The value may hold a password: only its scheme is named.
        raise ConfigError(
            f"{path}.url_env",
            f"{redis.url_env} must hold a redis://, rediss:// or unix:// URL",
        )
    if redis.HasField("timeout") and seconds_or(redis, "timeout", 0.0) <= 0:
        raise ConfigError(f"{path}.timeout", "must be positive")
    if redis.HasField("max_connections") and redis.max_connections < 1:
        raise ConfigError(f"{path}.max_connections", "must be at least 1")


_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "x-api-key", "x-goog-api-key", "proxy-authorization"}
)
_FULL_METHOD = re.compile(r"^/[A-Za-z0-9_.]+/[A-Za-z0-9_]+$")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+/-]{0,126}")
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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


def _validate_model_targets(model: config_pb2.ModelConfig, providers: set[str], path: str) -> None:
    """Either one provider (and upstream model) or a list of deployments."""
    if not model.deployments:
        if model.provider not in providers:
            raise ConfigError(f"{path}.provider", f'no provider is named "{model.provider}"')
        if model.balance:
            raise ConfigError(f"{path}.balance", "needs deployments to balance over")
        return
    if model.provider or model.upstream_model:
        raise ConfigError(
            f"{path}.deployments", "set either provider and upstream_model, or deployments"
        )
    seen: set[tuple[str, str]] = set()
    for k, target in enumerate(model.deployments):
        where = f"{path}.deployments[{k}]"
        if target.provider not in providers:
            raise ConfigError(f"{where}.provider", f'no provider is named "{target.provider}"')
        if target.HasField("weight") and not 1 <= target.weight <= 1000:
            raise ConfigError(f"{where}.weight", "must be from 1 to 1000")
        key = (target.provider, target.upstream_model or model.alias)
        if key in seen:
            raise ConfigError(where, f"{key[0]}/{key[1]} is listed twice")
        seen.add(key)


def _validate_upstream_models(
    model: config_pb2.ModelConfig, providers: Sequence[config_pb2.ProviderConfig], path: str
) -> None:
    """Every name sent upstream fits its provider kind's rule, so that no configured
    name can change the URL it is placed in (service/providers/model_names.py)."""
    kinds = {p.name: p.WhichOneof("kind") or "" for p in providers}
    targets = [
        (f"{path}.deployments[{k}]", target.provider, target.upstream_model)
        for k, target in enumerate(model.deployments)
    ] or [(path, model.provider, model.upstream_model)]
    for where, provider, upstream_model in targets:
        kind = kinds[provider]
        if upstream_model:
            field, name = f"{where}.upstream_model", upstream_model
        else:  # the alias is sent as it is
            field, name = f"{path}.alias", model.alias
        problem = rule_for(kind).problem(name)
        if problem is not None:
            raise ConfigError(field, f"{problem}, for a {kind} provider")


def _validate_fallbacks(config: config_pb2.GatewayConfig) -> None:
    aliases = {m.alias for m in config.models}
    for index, model in enumerate(config.models):
        for field in ("fallbacks", "context_fallbacks"):
            for k, alias in enumerate(getattr(model, field)):
                if alias not in aliases:
                    raise ConfigError(
                        f"models[{index}].{field}[{k}]", f'no model is named "{alias}"'
                    )
                if alias == model.alias:
                    raise ConfigError(
                        f"models[{index}].{field}[{k}]", "a model cannot fall back to itself"
                    )


def _validate_routing(
    retry: config_pb2.RetryConfig, breaker: config_pb2.BreakerConfig, path: str
) -> None:
    if retry.HasField("max_attempts") and not 1 <= retry.max_attempts <= 10:
        raise ConfigError(f"{path}.retry.max_attempts", "must be 1 to 10")
    if retry.HasField("multiplier") and retry.multiplier < 1:
        raise ConfigError(f"{path}.retry.multiplier", "must be at least 1")
    budget = retry.budget
    if budget.HasField("ratio") and not 0 <= budget.ratio <= 1:
        raise ConfigError(f"{path}.retry.budget.ratio", "must be 0 to 1")
    if breaker.HasField("failure_rate") and not 0 < breaker.failure_rate <= 1:
        raise ConfigError(f"{path}.breaker.failure_rate", "must be above 0 and at most 1")
    if breaker.HasField("consecutive_failures") and breaker.consecutive_failures < 1:
        raise ConfigError(f"{path}.breaker.consecutive_failures", "must be at least 1")
    if breaker.HasField("cool_down_jitter") and not 0 <= breaker.cool_down_jitter <= 0.5:
        raise ConfigError(f"{path}.breaker.cool_down_jitter", "must be 0 to 0.5")
    for holder, prefix, names in (
        (retry, "retry", ("initial_backoff", "max_backoff", "max_retry_after")),
        (breaker, "breaker", ("window", "cool_down", "max_cool_down")),
    ):
        for name in names:
            if seconds_or(holder, name, 1.0) <= 0:
                raise ConfigError(f"{path}.{prefix}.{name}", "must be positive")


def _validate_quota_cool_down(
    holder: config_pb2.RoutingConfig | config_pb2.ProviderConfig, path: str
) -> None:
    if seconds_or(holder, "quota_cool_down", 0.0) < 0:
        raise ConfigError(f"{path}.quota_cool_down", "must not be negative (0s turns it off)")


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


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
    if kind == "custom" and not _CLASS_PATH.match(provider.custom.class_path):
        raise ConfigError(f"{path}.custom.class_path", 'must look like "package.module:ClassName"')
    if kind == "mock":
        mock = provider.mock
        if mock.HasField("embedding_dimensions") and not 1 <= mock.embedding_dimensions <= 4096:
            raise ConfigError(f"{path}.mock.embedding_dimensions", "must be 1 to 4096")
        status = mock.fault.http_status
        if status and not 400 <= status <= 599:
            raise ConfigError(f"{path}.mock.fault.http_status", "must be 400 to 599")


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def seconds_or(holder: message.Message, field: str, default: float) -> float:
    """The Duration field `field` of `holder` in seconds, or `default` when unset."""
    if holder.HasField(field):
        return _seconds(getattr(holder, field))
    return default


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
    return LoadedConfig(kept, tuple(skipped))
