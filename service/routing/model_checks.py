"""Checks the `models` section: aliases, their provider or deployments, the names sent
upstream, cache TTLs, timeouts, pricing and fallbacks. Used by
service/providers/registry.py and the router's planner; called by the loader in
service/config.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or
from service.providers.model_names import rule_for

_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def check_models(
    models: Sequence[config_pb2.ModelConfig], providers: Sequence[config_pb2.ProviderConfig]
) -> None:
    """Raises ConfigError at the first problem in `models` (at least one is required);
    `providers` are the checked providers they refer to."""
    if not models:
        raise ConfigError("models", "at least one model is required")
    names = {provider.name for provider in providers}
    aliases: set[str] = set()
    for index, model in enumerate(models):
        path = f"models[{index}]"
        if not model.alias:
            raise ConfigError(f"{path}.alias", "is required")
        if not _ALIAS.match(model.alias):
            raise ConfigError(f"{path}.alias", "use letters, digits and . _ : / - (at most 128)")
        if model.alias in aliases:
            raise ConfigError(f"{path}.alias", f'"{model.alias}" is used twice')
        aliases.add(model.alias)
        _validate_model_targets(model, names, path)
        _validate_upstream_models(model, providers, path)
        if model.HasField("cache") and seconds_or(model.cache, "ttl", 0.0) <= 0:
            raise ConfigError(f"{path}.cache.ttl", "is required and must be positive")
        if model.timeouts.ByteSize():
            for name in ("connect", "read", "total", "first_token", "idle"):
                if seconds_or(model.timeouts, name, 1.0) <= 0:
                    raise ConfigError(f"{path}.timeouts.{name}", "must be positive")
        if model.HasField("pricing"):
            _check_pricing(model.pricing, f"{path}.pricing")
        for k, target in enumerate(model.deployments):
            if target.HasField("pricing"):
                _check_pricing(target.pricing, f"{path}.deployments[{k}].pricing")
        check_batch(model, path)


def _check_pricing(prices: config_pb2.PricingConfig, path: str) -> None:
    for name in (
        "input_per_million",
        "cached_input_per_million",
        "cache_write_input_per_million",
        "output_per_million",
    ):
        if getattr(prices, name) < 0:
            raise ConfigError(f"{path}.{name}", "must not be negative")


def check_batch(model: config_pb2.ModelConfig, path: str) -> None:
    """`batch` (Embed batching): a window of 1 ms to 10 s, on an embeddings alias."""
    if not model.HasField("batch"):
        return
    window = seconds_or(model.batch, "window", 0.0)
    if not 0.001 <= window <= 10.0:
        raise ConfigError(f"{path}.batch.window", "is required, from 1ms to 10s")
    if model.batch.HasField("max_inputs") and not 2 <= model.batch.max_inputs <= 2048:
        raise ConfigError(f"{path}.batch.max_inputs", "must be from 2 to 2048")
    if not (model.capabilities.HasField("embeddings") and model.capabilities.embeddings):
        raise ConfigError(f"{path}.batch", "batches Embed calls: needs capabilities.embeddings")


def check_fallbacks(models: Sequence[config_pb2.ModelConfig]) -> None:
    """Raises ConfigError for a fallback that names no model, or the model itself."""
    aliases = {m.alias for m in models}
    for index, model in enumerate(models):
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
