"""The errors the gateway makes itself when it does not call a deployment, or when
no deployment of a call's chain served it: an open circuit, a quota cool-down, and
the verdict on a chain whose every deployment failed over."""

from __future__ import annotations

import grpc

from service.errors import GatewayError, internal
from service.providers.base import Deployment
from service.routing.quotas import UPSTREAM_RATE_LIMITED

# An upstream's "the account is out of quota" (upstream_errors.py), and the gateway's
# refusal to call a deployment while it rests after one.
QUOTA_EXHAUSTED = "UPSTREAM_QUOTA_EXHAUSTED"
QUOTA_COOLING_DOWN = "QUOTA_COOLING_DOWN"


def circuit_open(deployment: Deployment, remaining: float) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "CIRCUIT_OPEN",
        f"{deployment.provider}: failing fast while the circuit is open",
        metadata={"provider": deployment.provider, "model": deployment.upstream_model},
        retry_after=remaining,
        retryable=False,
        failover=True,
    )


def quota_cooling_down(deployment: Deployment, remaining: float) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        QUOTA_COOLING_DOWN,
        f"{deployment.provider}: the account is out of quota; not tried again for now",
        metadata={"provider": deployment.provider, "model": deployment.upstream_model},
        retry_after=remaining,
        retryable=False,
        failover=True,
        upstream_fault=False,
    )


def exhausted(errors: list[GatewayError]) -> GatewayError:
    """The error for a call whose every deployment failed over. When none had room
    under its provider's rate limit: RESOURCE_EXHAUSTED UPSTREAM_RATE_LIMITED_LOCALLY
    with the earliest time one frees up."""
    if not errors:
        return internal("no deployment could be tried")
    deployments = {
        e.metadata.get("provider", "") + "/" + e.metadata.get("model", "") for e in errors
    }
    if len(deployments) == 1:
        return errors[-1]  # one deployment: its own error (429 stays RESOURCE_EXHAUSTED)
    hints = [e.retry_after for e in errors if e.retry_after is not None]
    if all(e.reason == UPSTREAM_RATE_LIMITED for e in errors):
        return GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            UPSTREAM_RATE_LIMITED,
            "every deployment for this model is at its provider's rate limit; "
            "the gateway held the call back",
            metadata={"deployments": str(len(deployments))},
            retry_after=min(hints) if hints else None,
            quota_violations=[v for e in errors for v in e.quota_violations],
            failover=True,
            upstream_fault=False,
        )
    if all(
        e.reason in (QUOTA_EXHAUSTED, QUOTA_COOLING_DOWN, UPSTREAM_RATE_LIMITED) for e in errors
    ):
        return GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            QUOTA_COOLING_DOWN,
            "every deployment for this model is out of quota at its provider",
            metadata={"lastReason": errors[-1].reason},
            retry_after=min(hints) if hints else None,
        )
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "ALL_DEPLOYMENTS_FAILED",
        "every deployment for this model failed",
        metadata={"lastReason": errors[-1].reason},
        retry_after=min(hints) if hints else None,
    )
