"""Checks the providers' rate limits (`rate_limit` on providers, models and deployments):
one deployment (provider + upstream model) has one quota, whichever aliases use it.
Used by service/routing/quotas.py; called by the loader in service/config.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError


def rate_limit_of(
    provider: config_pb2.ProviderConfig,
    model: config_pb2.ModelConfig,
    target: config_pb2.DeploymentTarget | None = None,
) -> tuple[int, int] | None:
    """(requests, tokens) per minute of the rate_limit that applies to one deployment:
    the deployment's own, else the model's, else the provider's, the most specific one
    that is set winning as a whole; None when it limits nothing."""
    for holder in (target, model, provider):
        if holder is not None and holder.HasField("rate_limit"):
            limit = holder.rate_limit
            if not limit.requests_per_minute and not limit.tokens_per_minute:
                return None
            return (limit.requests_per_minute, limit.tokens_per_minute)
    return None


def check_rate_limits(
    models: Sequence[config_pb2.ModelConfig], providers: Sequence[config_pb2.ProviderConfig]
) -> None:
    """Raises ConfigError where a deployment is given a second, different quota."""
    by_name = {provider.name: provider for provider in providers}
    seen: dict[str, tuple[tuple[int, int] | None, str]] = {}
    for index, model in enumerate(models):
        path = f"models[{index}]"
        targets: list[tuple[str, config_pb2.DeploymentTarget | None, str, str]] = [
            (f"{path}.deployments[{k}]", t, t.provider, t.upstream_model)
            for k, t in enumerate(model.deployments)
        ] or [(path, None, model.provider, model.upstream_model)]
        for where, target, provider, upstream_model in targets:
            if provider not in by_name:
                continue  # reported by the models' checks
            quota = rate_limit_of(by_name[provider], model, target)
            if target is not None and target.HasField("rate_limit"):
                origin = f"{where}.rate_limit"
            elif model.HasField("rate_limit"):
                origin = f"{path}.rate_limit"
            else:
                origin = where
            key = f"{provider}/{upstream_model or model.alias}"
            earlier = seen.setdefault(key, (quota, origin))
            if earlier[0] != quota:
                raise ConfigError(
                    origin,
                    f"{key} already has another rate limit ({earlier[1]}); one deployment "
                    "has one quota, whichever aliases use it",
                )
