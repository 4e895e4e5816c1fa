"""Builds every provider and model alias once from the configuration."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from llmgateway.config.v1 import config_pb2

from service.errors import model_not_found
from service.providers.base import EMBEDDINGS_ONLY, Capabilities, Deployment, Provider
from service.providers.mock import MockProvider

ProviderFactory = Callable[[config_pb2.ProviderConfig], Provider]

# One entry per member of ProviderConfig.kind.
FACTORIES: dict[str, ProviderFactory] = {
    "mock": lambda config: MockProvider(config.name, config.mock),
}


def capabilities_for(provider: Provider, overrides: config_pb2.CapabilitiesConfig) -> Capabilities:
    """The provider kind's defaults, with the alias's explicit settings on top."""
    base = provider.default_capabilities
    if overrides.HasField("embeddings") and overrides.embeddings:
        base = EMBEDDINGS_ONLY
    changes = {
        name: getattr(overrides, name)
        for name in ("streaming", "tools", "vision", "json_output", "embeddings")
        if overrides.HasField(name)
    }
    return replace(base, **changes)


class Registry:
    """Providers by name and deployments by model alias."""

    def __init__(
        self,
        providers: dict[str, Provider],
        models: dict[str, Deployment],
        allow_direct_addressing: bool,
    ) -> None:
        self.providers = providers
        self.models = models
        self._allow_direct = allow_direct_addressing

    @classmethod
    def from_config(cls, config: config_pb2.GatewayConfig) -> Registry:
        providers: dict[str, Provider] = {}
        for provider_config in config.providers:
            kind = provider_config.WhichOneof("kind")
            assert kind is not None  # checked by config validation
            providers[provider_config.name] = FACTORIES[kind](provider_config)
        models = {}
        for model in config.models:
            provider = providers[model.provider]
            models[model.alias] = Deployment(
                alias=model.alias,
                provider=provider.name,
                provider_type=provider.kind,
                upstream_model=model.upstream_model or model.alias,
                capabilities=capabilities_for(provider, model.capabilities),
                context_window=model.context_window,
            )
        return cls(providers, models, config.allow_direct_model_addressing)

    def resolve(self, model: str) -> Deployment:
        """The deployment for a requested model name, or NOT_FOUND."""
        deployment = self.models.get(model)
        if deployment is not None:
            return deployment
        if self._allow_direct and "/" in model:
            provider_name, upstream_model = model.split("/", 1)
            provider = self.providers.get(provider_name)
            if provider is not None and upstream_model:
                return Deployment(
                    alias=model,
                    provider=provider.name,
                    provider_type=provider.kind,
                    upstream_model=upstream_model,
                    capabilities=provider.default_capabilities,
                )
        raise model_not_found(model)

    def provider(self, name: str) -> Provider:
        return self.providers[name]

    def deployments(self) -> Iterable[Deployment]:
        return (self.models[alias] for alias in sorted(self.models))

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
