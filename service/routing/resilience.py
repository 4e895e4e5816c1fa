"""Retry policies, retry budgets and circuit breakers, built once from the config."""

from __future__ import annotations

from collections.abc import Callable

from llmgateway.config.v1 import config_pb2

from service.providers.base import Deployment
from service.routing.breaker import BreakerSettings, CircuitBreaker
from service.routing.retry import RetryBudget, RetryPolicy

DEFAULT_MAX_TOTAL_ATTEMPTS = 6


class Resilience:
    def __init__(self, config: config_pb2.GatewayConfig, clock: Callable[[], float]) -> None:
        routing = config.routing
        self.max_total_attempts = (
            routing.max_total_attempts
            if routing.HasField("max_total_attempts")
            else DEFAULT_MAX_TOTAL_ATTEMPTS
        )
        self._clock = clock
        self._policies: dict[str, RetryPolicy] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._breaker_settings: dict[str, BreakerSettings] = {}
        for provider in config.providers:
            retry = provider.retry if provider.HasField("retry") else routing.retry
            breaker = provider.breaker if provider.HasField("breaker") else routing.breaker
            self._policies[provider.name] = RetryPolicy.from_config(retry)
            self._budgets[provider.name] = RetryBudget.from_config(retry.budget, clock)
            self._breaker_settings[provider.name] = BreakerSettings.from_config(breaker)
        self.breakers: dict[str, CircuitBreaker] = {}

    def policy(self, provider: str) -> RetryPolicy:
        return self._policies[provider]

    def budget(self, provider: str) -> RetryBudget:
        return self._budgets[provider]

    def breaker(self, deployment: Deployment) -> CircuitBreaker:
        breaker = self.breakers.get(deployment.key)
        if breaker is None:
            breaker = CircuitBreaker(self._breaker_settings[deployment.provider], self._clock)
            self.breakers[deployment.key] = breaker
        return breaker
