"""Planning: which deployments may serve a call, and in which order.

The planner turns (alias, request, caller) into an ordered list of deployments: the
deployment that stands for the alias, the other deployments of its pool in the
balancer's order, then those of its fallbacks, each one only when the caller is
allowed it and it can do what the request asks (the capability check). It never
calls an upstream: the balancer, and the checks it is given, only feed it.
"""

from __future__ import annotations

from collections.abc import Callable

from llmgateway.v1 import route_pb2

from service.errors import GatewayError
from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.routing.balancer import Balancer

# Raises a GatewayError when a deployment cannot serve the request (capabilities).
Check = Callable[[Deployment], None]


class Planner:
    def __init__(
        self,
        registry: Registry,
        balancer: Balancer,
        can_take: Callable[[Deployment], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.balancer = balancer
        self.can_take = can_take  # may a deployment take a call now (availability.py)

    def primary(self, model: str, check: Check) -> Deployment:
        """The deployment that stands for the alias asked for: the first that the
        caller's own request fits (INVALID_ARGUMENT or NOT_FOUND when none does)."""
        refusal: GatewayError | None = None
        for member in self.registry.members(self.registry.resolve(model)):
            try:
                check(member.deployment)  # deployments of other kinds may differ
            except GatewayError as error:
                refusal = refusal or error
            else:
                return member.deployment
        assert refusal is not None
        raise refusal

    def chain(self, primary: Deployment, check: Check, ctx: CallContext) -> list[Deployment]:
        """The deployments of the alias asked for (in the balancer's order, taking its
        turn), then those of its fallbacks (ordered without taking theirs: most calls
        never reach them)."""
        chain = [d for d in self._balanced(primary) if d is primary or fits(check, d, ctx)]
        return chain + self.candidates(primary.fallbacks, chain, check, ctx)

    def _balanced(self, deployment: Deployment, advance: bool = True) -> list[Deployment]:
        pool = self.registry.pool(deployment.alias)
        if pool is None:
            return [deployment]
        return self.balancer.order(pool, advance, self.can_take)

    def candidates(
        self, aliases: tuple[str, ...], chain: list[Deployment], check: Check, ctx: CallContext
    ) -> list[Deployment]:
        """The deployments of fallback aliases that are not in `chain` and fit the call."""
        found: list[Deployment] = []
        for alias_deployment in self.registry.chain(aliases):
            for candidate in self._balanced(alias_deployment, advance=False):
                fresh = candidate not in chain and candidate not in found
                if fresh and fits(check, candidate, ctx):
                    found.append(candidate)
        return found

    def named(self, route: route_pb2.RouteInfo, primary: Deployment) -> Deployment:
        """The deployment a route names, among those a call to `primary` could use."""
        aliases = (primary.alias, *primary.fallbacks, *primary.context_fallbacks)
        named = (route.provider, route.upstream_model)
        for alias_deployment in self.registry.chain(aliases) or [primary]:
            for member in self.registry.members(alias_deployment):
                if (member.deployment.provider, member.deployment.upstream_model) == named:
                    return member.deployment
        return primary


def fits(check: Check, deployment: Deployment, ctx: CallContext) -> bool:
    """May this fallback serve the call: is the caller allowed it, and can it do it?"""
    if not ctx.identity.may_use(deployment.alias):
        return False
    try:
        check(deployment)
    except GatewayError:
        return False
    return True
