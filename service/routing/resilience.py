"""Retry policies, retry budgets, circuit breakers and quota cool-downs, built once
from the config."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or
from service.providers.base import Deployment
from service.routing.breaker import BreakerSettings, CircuitBreaker, State
from service.routing.retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from service.routing.shared_breakers import SharedBreakers

DEFAULT_MAX_TOTAL_ATTEMPTS = 6
DEFAULT_QUOTA_COOL_DOWN = 60.0


class Resilience:
    def __init__(
        self,
        config: config_pb2.GatewayConfig,
        clock: Callable[[], float],
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        routing = config.routing
        self.max_total_attempts = (
            routing.max_total_attempts
            if routing.HasField("max_total_attempts")
            else DEFAULT_MAX_TOTAL_ATTEMPTS
        )
        self._clock = clock
        self._uniform = uniform
        default_quota = seconds_or(routing, "quota_cool_down", DEFAULT_QUOTA_COOL_DOWN)
        self._quota_cool_downs: dict[str, float] = {}
        self._policies: dict[str, RetryPolicy] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._breaker_settings: dict[str, BreakerSettings] = {}
        for provider in config.providers:
            retry = provider.retry if provider.HasField("retry") else routing.retry
            breaker = provider.breaker if provider.HasField("breaker") else routing.breaker
            self._policies[provider.name] = RetryPolicy.from_config(retry)
            self._budgets[provider.name] = RetryBudget.from_config(retry.budget, clock)
            self._breaker_settings[provider.name] = BreakerSettings.from_config(breaker)
            self._quota_cool_downs[provider.name] = seconds_or(
                provider, "quota_cool_down", default_quota
            )
        self.breakers: dict[str, CircuitBreaker] = {}
        # Breakers whose settings say `shared` learn with the other replicas.
        self.shared: SharedBreakers | None = None

    def policy(self, provider: str) -> RetryPolicy:
        return self._policies[provider]

    def budget(self, provider: str) -> RetryBudget:
        return self._budgets[provider]

    def quota_cool_down(self, provider: str) -> float:
        """How long a deployment of `provider` rests after an out-of-quota answer
        (0: not at all)."""
        return self._quota_cool_downs[provider]

    def breaker(self, deployment: Deployment) -> CircuitBreaker:
        breaker = self.breakers.get(deployment.key)
        if breaker is None:
            settings = self._breaker_settings[deployment.provider]
            breaker = CircuitBreaker(settings, self._clock, self._uniform)
            self.breakers[deployment.key] = breaker
        return breaker

    async def admit(self, deployment: Deployment, breaker: CircuitBreaker) -> bool:
        """May a call go to `deployment` now? Its breaker decides; a probe of a shared
        breaker must also be the one probe of every replica."""
        if not breaker.allow():
            return False
        shared = self.shared
        if breaker.state is State.HALF_OPEN and shared is not None and shared.shares(deployment):
            try:
                return await shared.claim_probe(deployment, breaker)
            except BaseException:
                breaker.release()
                raise
        return True
