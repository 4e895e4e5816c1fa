"""Rate limits and spend budgets per subject and per tenant.

`Limiter.from_config(config.limits)` once; per call `await limiter.admit(identity,
estimate_tokens(request))` before routing (raises a RESOURCE_EXHAUSTED GatewayError)
and `await reservation.settle(usage)` when the call is over (usage None when it
failed before usage was known).
"""

from service.limits.estimate import estimate_tokens
from service.limits.limiter import (
    BUDGET_EXCEEDED,
    CALLER_RATE_LIMITED,
    Limiter,
    Limits,
    Reservation,
)
from service.limits.store import InMemoryLimitStore, LimitStore

__all__ = [
    "BUDGET_EXCEEDED",
    "CALLER_RATE_LIMITED",
    "InMemoryLimitStore",
    "LimitStore",
    "Limiter",
    "Limits",
    "Reservation",
    "estimate_tokens",
]
