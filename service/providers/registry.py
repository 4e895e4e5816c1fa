"""Builds every provider and model alias once from the configuration."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import grpc
from llmgateway.config.v1 import config_pb2

from service.config import ConfigError, seconds_or
from service.errors import FieldViolation, GatewayError, invalid_argument, model_not_found
from service.providers import model_names
from service.providers.base import (
    EMBEDDINGS_ONLY,
    Capabilities,
    Deployment,
    EmbedBatching,
    Provider,
    RateQuota,
    Timeouts,
)
from service.providers.mock import MockProvider
from service.providers.usage_estimate import EstimatedUsage
from service.routing.balancer import Member, Pool, Strategy
from service.routing.headroom import configured_quota
from service.routing.pricing import pricing_from

log = logging.getLogger(__name__)

ProviderFactory = Callable[[config_pb2.ProviderConfig, Mapping[str, str]], Provider]

# One entry per member of ProviderConfig.kind: "module:function", imported on first use.
FACTORIES: dict[str, str] = {
    "mock": "service.providers.registry:create_mock",
    "openai": "service.providers.openai:create_openai",
    "openai_compatible": "service.providers.openai:create_compatible",
    "azure_openai": "service.providers.azure:create_azure",
    "anthropic": "service.providers.anthropic:create_anthropic",
    "gemini": "service.providers.gemini:create_gemini",
    "vertex_ai": "service.providers.vertex:create_vertex",
    "ollama": "service.providers.ollama:create_ollama",
    "custom": "service.providers.custom:create_custom",
}


def create_mock(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    return MockProvider(config.name, config.mock)


def factory_for(kind: str) -> ProviderFactory:
    module_name, _, function = FACTORIES[kind].partition(":")
    factory: ProviderFactory = getattr(importlib.import_module(module_name), function)
    return factory


def capabilities_for(provider: Provider, overrides: config_pb2.CapabilitiesConfig) -> Capabilities:
    """The provider kind's defaults, with the alias's explicit settings on top."""
    base = provider.default_capabilities
    if overrides.HasField("embeddings") and overrides.embeddings:
        base = EMBEDDINGS_ONLY
    changes = {
        name: getattr(overrides, name)
        for name in ("streaming", "tools", "vision", "json_output", "embeddings", "documents")
        if overrides.HasField(name)
    }
    return replace(base, **changes)


def timeouts_for(provider: config_pb2.TimeoutConfig, model: config_pb2.TimeoutConfig) -> Timeouts:
    """Model settings over provider settings over the defaults, field by field."""
    defaults = Timeouts()

    def pick(field: str, default: float | None) -> float | None:
        for holder in (model, provider):
            if holder.HasField(field):  # type: ignore[arg-type]
                return seconds_or(holder, field, 0.0)
        return default

    return Timeouts(
        connect=pick("connect", defaults.connect) or defaults.connect,
        read=pick("read", defaults.read) or defaults.read,
        total=pick("total", defaults.total) or defaults.total,
        first_token=pick("first_token", None),
        idle=pick("idle", None),
    )


def provider_key_missing(alias: str, deployment: Deployment) -> GatewayError:
    """A call to an alias whose providers were all left out for a missing API key."""
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_KEY_MISSING",
        f'model "{alias}" cannot be served: the API key of provider '
        f'"{deployment.provider}" is not set',
        metadata={"model": alias, "provider": deployment.provider},
    )


def _check_direct_name(provider: Provider, upstream_model: str) -> None:
    """A caller's upstream model name must fit its provider kind's rule. The message
    names the rule, not the name: it may hold anything the caller sent."""
    problem = model_names.rule_for(provider.kind).problem(upstream_model)
    if problem is not None:
        error = invalid_argument(
            [FieldViolation("model", f'the part after "{provider.name}/" {problem}')]
        )
        raise error.with_metadata(provider=provider.name)


class Registry:
    """Providers by name and deployments by model alias."""

    def __init__(
        self,
        providers: dict[str, Provider],
        models: dict[str, Deployment],
        allow_direct_addressing: bool,
        provider_timeouts: dict[str, Timeouts] | None = None,
        pools: dict[str, Pool] | None = None,
        quotas: dict[str, RateQuota | None] | None = None,
    ) -> None:
        self.providers = providers
        self._serving = {name: EstimatedUsage(p) for name, p in providers.items()}
        self.models = models
        self.pools = pools or {}
        self._allow_direct = allow_direct_addressing
        self._provider_timeouts = provider_timeouts or {}
        # Keyed "provider/model" for configured deployments and "provider" for the rest.
        self._quotas = quotas or {}
        # Providers left out because their API key variable is unset (name -> kind),
        # and the aliases left out with them: visible, never called.
        self.key_missing: dict[str, str] = {}
        self.left_out: dict[str, tuple[Deployment, ...]] = {}
        self._trimmed: list[str] = []  # keys of deployments left out of a pool

    def note_key_missing(self, as_written: config_pb2.GatewayConfig) -> None:
        """Remembers what the configuration as written had beyond this registry: the
        providers without keys and the aliases served only by them."""
        kinds = {p.name: p.WhichOneof("kind") or "" for p in as_written.providers}
        self.key_missing = {
            name: kind for name, kind in kinds.items() if name not in self.providers
        }
        for model in as_written.models:
            for target in model.deployments:
                if target.provider in self.key_missing:
                    self._trimmed.append(
                        f"{target.provider}/{target.upstream_model or model.alias}"
                    )
            if model.alias in self.models:
                continue
            targets = list(model.deployments) or [
                config_pb2.DeploymentTarget(
                    provider=model.provider, upstream_model=model.upstream_model
                )
            ]
            self.left_out[model.alias] = tuple(
                Deployment(
                    alias=model.alias,
                    provider=target.provider,
                    provider_type=kinds.get(target.provider, ""),
                    upstream_model=target.upstream_model or model.alias,
                    capabilities=(
                        EMBEDDINGS_ONLY if model.capabilities.embeddings else Capabilities()
                    ),
                    context_window=model.context_window,
                )
                for target in targets
            )

    def left_out_keys(self) -> set[str]:
        """Deployment keys of providers whose key is missing (for GetProviderStats)."""
        keys = {d.key for ds in self.left_out.values() for d in ds}
        return {key for key in {*keys, *self._trimmed} if key.split("/")[0] in self.key_missing}

    @classmethod
    def from_config(
        cls, config: config_pb2.GatewayConfig, environ: Mapping[str, str] | None = None
    ) -> Registry:
        env = os.environ if environ is None else environ
        providers: dict[str, Provider] = {}
        for index, provider_config in enumerate(config.providers):
            kind = provider_config.WhichOneof("kind")
            assert kind is not None  # checked by config validation
            try:
                providers[provider_config.name] = factory_for(kind)(provider_config, env)
            except ConfigError as exc:
                raise ConfigError(f"providers[{index}].{exc.path}", exc.problem) from exc
        provider_configs = {p.name: p for p in config.providers}
        models: dict[str, Deployment] = {}
        pools: dict[str, Pool] = {}
        # Rate limits by deployment key, for provider/model addressed directly.
        quotas: dict[str, RateQuota | None] = {}
        for model in config.models:
            targets = list(model.deployments) or [
                config_pb2.DeploymentTarget(
                    provider=model.provider, upstream_model=model.upstream_model
                )
            ]
            members = []
            for target in targets:
                provider = providers[target.provider]
                capabilities = capabilities_for(provider, model.capabilities)
                deployment = Deployment(
                    alias=model.alias,
                    provider=provider.name,
                    provider_type=provider.kind,
                    upstream_model=target.upstream_model or model.alias,
                    capabilities=capabilities,
                    # An embedding model's input limit is not the chat context window.
                    context_window=model.context_window
                    or (0 if capabilities.embeddings else provider.default_context_window),
                    context_limit=0 if capabilities.embeddings else model.context_window,
                    pricing=(
                        pricing_from(target.pricing)
                        if target.HasField("pricing")
                        else pricing_from(model.pricing)
                        if model.HasField("pricing")
                        else None
                    ),
                    timeouts=timeouts_for(
                        provider_configs[target.provider].timeouts, model.timeouts
                    ),
                    fallbacks=tuple(model.fallbacks),
                    context_fallbacks=tuple(model.context_fallbacks),
                    cache_ttl=(
                        seconds_or(model.cache, "ttl", 0.0) if model.HasField("cache") else None
                    ),
                    rate_limit=configured_quota(
                        provider_configs[target.provider],
                        model,
                        target if model.deployments else None,
                    ),
                    batch=(
                        EmbedBatching(
                            seconds_or(model.batch, "window", 0.005), model.batch.max_inputs
                        )
                        if model.HasField("batch")
                        else None
                    ),
                    drop_unsupported=model.drop_unsupported,
                    allow_provider_options=model.allow_provider_options,
                )
                quotas.setdefault(deployment.key, deployment.rate_limit)
                weight = target.weight if target.HasField("weight") else 1
                members.append(Member(deployment, weight))
            # The first deployment stands for the alias where one is named (ListModels).
            models[model.alias] = members[0].deployment
            if model.deployments:
                pools[model.alias] = Pool(
                    model.alias, Strategy.from_config(model.balance), tuple(members)
                )
        no_override = config_pb2.TimeoutConfig()
        provider_timeouts = {
            name: timeouts_for(provider_config.timeouts, no_override)
            for name, provider_config in provider_configs.items()
        }
        for name, provider_config in provider_configs.items():
            quotas.setdefault(name, configured_quota(provider_config, config_pb2.ModelConfig()))
        return cls(
            providers,
            models,
            config.allow_direct_model_addressing,
            provider_timeouts,
            pools,
            quotas,
        )

    def resolve(self, model: str) -> Deployment:
        """The deployment for a requested model name, or NOT_FOUND; INVALID_ARGUMENT
        for a direct `provider/model` whose model is outside the provider's rule."""
        deployment = self.models.get(model)
        if deployment is not None:
            return deployment
        if model in self.left_out:
            raise provider_key_missing(model, self.left_out[model][0])
        if self._allow_direct and "/" in model:
            provider_name, upstream_model = model.split("/", 1)
            provider = self.providers.get(provider_name)
            if provider is not None:
                _check_direct_name(provider, upstream_model)
                key = f"{provider.name}/{upstream_model}"
                return Deployment(
                    alias=model,
                    provider=provider.name,
                    provider_type=provider.kind,
                    upstream_model=upstream_model,
                    capabilities=provider.default_capabilities,
                    timeouts=self._provider_timeouts.get(provider.name, Timeouts()),
                    # The same quota as the configured deployment it may be, else the provider's.
                    rate_limit=self._quotas.get(key, self._quotas.get(provider.name)),
                )
        raise model_not_found(model)

    @property
    def allows_direct_addressing(self) -> bool:
        """May callers name `provider/model` (allow_direct_model_addressing)?"""
        return self._allow_direct

    def provider(self, name: str) -> Provider:
        """The provider to call: its answers always carry usage, the gateway's
        estimate standing in for counts the upstream did not report."""
        return self._serving[name]

    def pool(self, alias: str) -> Pool | None:
        """The deployments of a load-balanced alias; None for an alias with one."""
        return self.pools.get(alias)

    def members(self, deployment: Deployment) -> tuple[Member, ...]:
        """Every deployment of the alias `deployment` stands for (itself when alone)."""
        pool = self.pools.get(deployment.alias)
        return pool.members if pool is not None else (Member(deployment),)

    def chain(self, aliases: tuple[str, ...]) -> list[Deployment]:
        """The deployments of fallback aliases (validated to exist at start-up)."""
        return [self.models[alias] for alias in aliases if alias in self.models]

    def deployments(self) -> Iterable[Deployment]:
        return (self.models[alias] for alias in sorted(self.models))

    def every_deployment(self) -> list[Deployment]:
        """Every configured deployment of every alias (pool members included)."""
        return [member.deployment for d in self.deployments() for member in self.members(d)]

    async def aclose(self) -> None:
        """Closes every provider's clients, even when one of them fails to close."""
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:
                fields = {"provider": provider.name}
                log.exception("a provider failed to close", extra={"fields": fields})
