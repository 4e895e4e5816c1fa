"""Can a deployment take a call right now, and if not, why: the one view of it that the
planner (lowest-latency and lowest-cost orders) and ListModels share.

Composed of the deployment's circuit breaker (open and still cooling down), its quota
cool-down, whether its provider's API key is missing, and its room under the
provider's rate limit (quotas.py, this replica's view). Reading it changes nothing: the
half-open probe is still the breaker's to hand out when the call is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from service.providers.base import Deployment
from service.routing.refusals import QUOTA_COOLING_DOWN
from service.routing.resilience import Resilience

CIRCUIT_OPEN = "CIRCUIT_OPEN"
PROVIDER_KEY_MISSING = "PROVIDER_KEY_MISSING"
RATE_LIMITED = "UPSTREAM_RATE_LIMITED_LOCALLY"


class Availability:
    def __init__(
        self,
        resilience: Resilience,
        missing_keys: Iterable[str] = (),
        has_headroom: Callable[[Deployment], bool] | None = None,
    ) -> None:
        self.resilience = resilience
        self.missing_keys = frozenset(missing_keys)  # provider names
        self.has_headroom = has_headroom

    def why_not(self, deployment: Deployment) -> str | None:
        """The reason `deployment` cannot take a call now, or None when it can."""
        if deployment.provider in self.missing_keys:
            return PROVIDER_KEY_MISSING
        breaker = self.resilience.breakers.get(deployment.key)
        if breaker is not None:
            if breaker.quota_remaining() > 0:
                return QUOTA_COOLING_DOWN
            if breaker.open_remaining() > 0:
                return CIRCUIT_OPEN
        if self.has_headroom is not None and not self.has_headroom(deployment):
            return RATE_LIMITED
        return None

    def can_take(self, deployment: Deployment) -> bool:
        return self.why_not(deployment) is None
