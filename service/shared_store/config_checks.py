"""Checks the shared store's settings (`redis`, or its older name `limits.redis`) and
what opts in to it (`cache.store`, `routing.breaker.shared` and the providers' own
breakers). Used by service/shared_store/connection.py; called by the loader in
service/config.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError, seconds_or


def check_shared_store(config: config_pb2.GatewayConfig, environ: Mapping[str, str]) -> None:
    """Raises ConfigError at the first problem with the shared store or its users."""
    if config.HasField("redis") and config.limits.HasField("redis"):
        raise ConfigError(
            "limits.redis", "the shared store is already set in `redis`: set one of them"
        )
    configured = config.HasField("redis") or config.limits.HasField("redis")
    if config.HasField("redis"):
        _check_redis(config.redis, environ, "redis")
    elif config.limits.HasField("redis"):
        _check_redis(config.limits.redis, environ, "limits.redis")
    if config.cache.store == config_pb2.CACHE_STORE_REDIS and not configured:
        raise ConfigError("cache.store", "CACHE_STORE_REDIS needs the shared store (`redis`)")
    breakers = [("routing", config.routing.breaker)] + [
        (f"providers[{index}]", provider.breaker) for index, provider in enumerate(config.providers)
    ]
    for path, breaker in breakers:
        if breaker.shared and not configured:
            raise ConfigError(f"{path}.breaker.shared", "needs the shared store (`redis`)")


def _check_redis(redis: config_pb2.RedisStoreConfig, environ: Mapping[str, str], path: str) -> None:
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
    if redis.HasField("failures_to_pause") and redis.failures_to_pause < 1:
        raise ConfigError(f"{path}.failures_to_pause", "must be at least 1")
    if redis.HasField("pause") and seconds_or(redis, "pause", 0.0) <= 0:
        raise ConfigError(f"{path}.pause", "must be positive")
    if redis.HasField("max_pending_spends") and redis.max_pending_spends < 1:
        raise ConfigError(f"{path}.max_pending_spends", "must be at least 1")
