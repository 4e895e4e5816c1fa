"""Checks the sections the router's own policies read: `routing` (retry, retry budget,
circuit breaker, quota cool-down), the same overrides on each provider, and `cache`
(the response cache). Used by service/routing/retry.py, breaker.py, resilience.py and
cache.py; called by the loader in service/config.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or


def check_routing(
    routing: config_pb2.RoutingConfig, providers: Sequence[config_pb2.ProviderConfig]
) -> None:
    """Raises ConfigError at the first problem in `routing` or a provider's overrides."""
    _validate_routing(routing.retry, routing.breaker, "routing")
    _validate_quota_cool_down(routing, "routing")
    for index, provider in enumerate(providers):
        _validate_routing(provider.retry, provider.breaker, f"providers[{index}]")
        _validate_quota_cool_down(provider, f"providers[{index}]")


def check_cache(cache: config_pb2.CacheConfig) -> None:
    """Raises ConfigError at the first problem in `cache`."""
    if cache.HasField("max_entries") and cache.max_entries < 1:
        raise ConfigError("cache.max_entries", "must be at least 1")
    if cache.HasField("max_bytes") and cache.max_bytes < 1024:
        raise ConfigError("cache.max_bytes", "must be at least 1024")


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
