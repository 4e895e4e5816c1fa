"""The providers' own rate limits, kept by the gateway so that it stops before their 429.

Before each upstream request the executor reserves the request's need (1 request and
its estimated tokens; headroom.py) from the deployment's configured quota: two token
buckets of the limit store (service/limits/store.py), in Redis when `limits.redis` is
configured, so that replicas share one quota, else in this process. When the quota or
the provider's last report has no room, the deployment is skipped without a request
(RESOURCE_EXHAUSTED `UPSTREAM_RATE_LIMITED_LOCALLY`, which fails over and never counts
against the breaker) and the call moves on to the next deployment of its chain.

After the request, `QuotaHold.settle` reconciles the tokens with the usage the provider
reported (a call that used less gives the rest back; one that used more leaves the
bucket in debt); a request that never left the gateway (no connection, no free pooled
connection) gives everything back (`release`); any other failure keeps its reservation,
as providers count failed requests too.

The providers' rate-limit headers (service/providers/rate_limit_headers.py) tighten the
view, in this replica: while a reported limit has less left than a request needs, the
deployment is skipped until the reported reset, and every request sent meanwhile is taken
from what was reported.

When the store cannot answer, a request goes out unlimited or the deployment is
skipped with UNAVAILABLE `LIMITS_UNAVAILABLE`, as `limits.redis.on_failure` says; every
failure is counted with the caller limits' (`StoreFailures`).

For the planner and the balance strategies: `has_headroom(deployment)` (this replica's
view, no I/O) and `await headroom(deployment)` (the full view, for statistics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from llmgateway.v1 import route_pb2

from service.errors import GatewayError, QuotaViolation
from service.limits.buckets import Rate
from service.limits.limiter import StoreFailures
from service.limits.store import InMemoryLimitStore, LimitStore, LimitStoreError
from service.providers.base import Deployment, RateQuota
from service.providers.rate_limit_headers import reported_limits
from service.routing.headroom import (
    Headroom,
    Need,
    Reported,
    Window,
    reported_wait,
    taken,
    with_report,
)

UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED_LOCALLY"
LIMITS_UNAVAILABLE = "LIMITS_UNAVAILABLE"
# What "has room for a call" means in statistics: the smallest request.
_SMALLEST = Need(1, 1)
# Failures of requests that never left the gateway: their reservation is given back.
_NEVER_SENT = {"UPSTREAM_CONNECT_FAILED", "POOL_EXHAUSTED"}


@dataclass(frozen=True)
class _Charge:
    key: str
    amount: float
    rate: Rate


def never_sent(error: GatewayError) -> bool:
    """Did this failure happen before the request reached the provider?"""
    if error.reason in _NEVER_SENT:
        return True
    return error.reason == "UPSTREAM_TIMEOUT" and error.metadata.get("detail") == "ConnectTimeout"


class QuotaHold:
    """What one upstream request reserved. Settle it with the usage, or release it when
    the request never reached the provider; only the first of the two counts."""

    def __init__(
        self,
        quotas: UpstreamQuotas | None = None,
        need: Need | None = None,
        charges: tuple[_Charge, ...] = (),
    ) -> None:
        self._quotas = quotas
        self._need = need
        self._charges = charges
        self._done = not charges

    async def settle(self, usage: route_pb2.Usage | None) -> None:
        """Replaces the estimated tokens with the reported usage (more: debt; less: given
        back). None, or a usage without any count, keeps the estimate."""
        if self._done:
            return
        self._done = True
        if usage is None or self._quotas is None or self._need is None:
            return
        actual = usage.total_tokens or usage.input_tokens + usage.output_tokens
        delta = actual - self._need.tokens
        charges = [c for c in self._charges if c.key.startswith(_TOKENS)]
        if actual > 0 and delta and charges:
            await self._quotas.adjust(charges, delta, "settlement")

    async def release(self) -> None:
        """Gives the whole reservation back (the request never left the gateway)."""
        if self._done:
            return
        self._done = True
        if self._quotas is not None:
            for charge in self._charges:
                await self._quotas.adjust([charge], -charge.amount, "giving back")


NO_HOLD = QuotaHold()
# Store keys of the two buckets, followed by the deployment's key.
_REQUESTS = "upstream:requests:"
_TOKENS = "upstream:tokens:"
# Deployments remembered per kind of state: callers addressing provider/model directly
# may name any number of them.
_OBSERVERS_KEPT = 1024
_REPORTS_KEPT = 4096


class UpstreamQuotas:
    def __init__(
        self,
        store: LimitStore | None = None,
        failures: StoreFailures | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        deployments: Iterable[Deployment] = (),
    ) -> None:
        """`clock` times the buckets (a shared store may use its own) and the reports;
        `wall_clock` reads the providers' absolute reset times. `deployments` are the
        configured ones, listed by `watched` even before their first call."""
        self.clock = clock
        self._wall_clock = wall_clock
        self._store: LimitStore = store if store is not None else InMemoryLimitStore(clock)
        self.failures = failures if failures is not None else StoreFailures(deny=False)
        self._reports: dict[str, dict[str, Window]] = {}
        self._refused_until: dict[str, float] = {}
        self._configured = {d.key: d for d in deployments if d.rate_limit is not None}
        self._seen: dict[str, Deployment] = {}
        self._observers: dict[str, Callable[[Mapping[str, str]], None]] = {}

    # --- the seam for planning ----------------------------------------------------

    def has_headroom(self, deployment: Deployment) -> bool:
        """This replica's view, without I/O: False while the provider's report leaves no
        room for the smallest request, or while the wait given to the last request
        refused here lasts."""
        now = self.clock()
        if self._refused_until.get(deployment.key, 0.0) > now:
            return False
        report = self._reports.get(deployment.key)
        return not report or reported_wait(report, _SMALLEST, now) <= 0

    async def headroom(self, deployment: Deployment) -> Headroom:
        """The configured quota's room (read from the store), the provider's report,
        and the time until the smallest request fits."""
        now = self.clock()
        quota = deployment.rate_limit
        report = {k: w for k, w in self._reports.get(deployment.key, {}).items() if w.until > now}
        refused_for = self._refused_until.get(deployment.key, 0.0) - now
        wait = max(reported_wait(report, _SMALLEST, now), refused_for, 0.0)
        requests = tokens = None
        if quota is not None:
            try:
                if quota.requests_per_minute:
                    rate = Rate.per_minute(quota.requests_per_minute)
                    requests = await self._store.level(_REQUESTS + deployment.key, rate, now)
                    wait = max(wait, _until(requests, 1, rate))
                if quota.tokens_per_minute:
                    rate = Rate.per_minute(quota.tokens_per_minute)
                    tokens = await self._store.level(_TOKENS + deployment.key, rate, now)
                    wait = max(wait, _until(tokens, 1, rate))
            except LimitStoreError as error:
                self.failures.record(error, "reading upstream headroom")
        reported = {k: Reported(w.remaining, w.until - now) for k, w in report.items()}
        return Headroom(quota, requests, tokens, reported, wait)

    def watched(self) -> list[Deployment]:
        """Deployments with a configured quota or a provider report, by key."""
        found = {**self._seen, **self._configured}
        return [found[key] for key in sorted(found)]

    # --- reservation ----------------------------------------------------------------

    def applies(self, deployment: Deployment) -> bool:
        """Does a request to this deployment need a reservation at all?"""
        return deployment.rate_limit is not None or deployment.key in self._reports

    async def reserve(self, deployment: Deployment, need: Need) -> QuotaHold:
        """Reserves one request's need, or raises RESOURCE_EXHAUSTED
        UPSTREAM_RATE_LIMITED_LOCALLY (UNAVAILABLE LIMITS_UNAVAILABLE when the store is
        down and on_failure is DENY) without keeping anything."""
        now = self.clock()
        key = deployment.key
        report = self._reports.get(key)
        if report:
            wait = reported_wait(report, need, now)
            if wait > 0:
                raise self._refused(deployment, "provider_reported", wait, now)
        charges: list[_Charge] = []
        quota = deployment.rate_limit
        if quota is not None:
            try:
                for prefix, per_minute, amount in (
                    (_REQUESTS, quota.requests_per_minute, 1),
                    (_TOKENS, quota.tokens_per_minute, need.tokens),
                ):
                    if not per_minute:
                        continue
                    charge = _Charge(prefix + key, amount, Rate.per_minute(per_minute))
                    decision = await self._store.take(charge.key, amount, charge.rate, now)
                    if not decision.allowed:
                        unit = prefix.removeprefix("upstream:").removesuffix(":")
                        raise self._refused(
                            deployment, f"{unit}_per_minute", decision.retry_after, now
                        )
                    charges.append(charge)
            except LimitStoreError as error:
                self.failures.record(error, "upstream quota")
                await self.adjust(charges, None, "giving back")
                if self.failures.deny:
                    raise _limits_unavailable(deployment) from None
                charges = []
            except BaseException:
                await self.adjust(charges, None, "giving back")
                raise
        self._refused_until.pop(key, None)
        report = self._reports.get(key)  # as it is now: a response may have come meanwhile
        if report:
            left = taken(report, need, now)
            if left:
                self._reports[key] = left
            else:
                self._reports.pop(key, None)
        return QuotaHold(self, need, tuple(charges)) if charges else NO_HOLD

    async def adjust(self, charges: list[_Charge], delta: float | None, during: str) -> None:
        """Charges `delta` more to each (None: gives each its own amount back)."""
        now = self.clock()
        try:
            for charge in reversed(charges):
                amount = -charge.amount if delta is None else delta
                await self._store.adjust(charge.key, amount, charge.rate, now)
        except LimitStoreError as error:
            self.failures.record(error, during)

    def _refused(self, deployment: Deployment, limit: str, wait: float, now: float) -> GatewayError:
        if len(self._refused_until) >= _REPORTS_KEPT:
            self._refused_until = {k: t for k, t in self._refused_until.items() if t > now}
        self._refused_until[deployment.key] = max(
            self._refused_until.get(deployment.key, 0.0), now + wait
        )
        return upstream_rate_limited(deployment, limit, wait)

    # --- the providers' reports -----------------------------------------------------

    def observer(self, deployment: Deployment) -> Callable[[Mapping[str, str]], None]:
        """Reads the rate-limit headers of the deployment's responses (one function per
        deployment, made once)."""
        observe = self._observers.get(deployment.key)
        if observe is None:
            if len(self._observers) >= _OBSERVERS_KEPT:  # direct addressing names many
                self._observers.clear()

            def observe(headers: Mapping[str, str]) -> None:
                self.observe(deployment, headers)

            self._observers[deployment.key] = observe
        return observe

    def observe(self, deployment: Deployment, headers: Mapping[str, str]) -> None:
        limits = reported_limits(headers, self._wall_clock())
        if not limits:
            return
        key = deployment.key
        now = self.clock()
        if key not in self._reports and len(self._reports) >= _REPORTS_KEPT:
            self._forget(now)
        report = with_report(self._reports.get(key, {}), limits, now)
        if report:
            self._reports[key] = report
            self._seen.setdefault(key, deployment)
        else:
            self._reports.pop(key, None)

    def forget_reports(self) -> None:
        """Forgets every provider report (the configured quotas stay as they are)."""
        self._reports.clear()
        self._seen.clear()
        self._refused_until.clear()

    def _forget(self, now: float) -> None:
        """Drops reports that no longer hold (all of them if every one still does), so
        that memory follows the deployments in use, not every name ever addressed."""
        held = {k: v for k, v in self._reports.items() if any(w.until > now for w in v.values())}
        self._reports = held if len(held) < _REPORTS_KEPT else {}
        self._seen = {k: d for k, d in self._seen.items() if k in self._reports}


def _until(level: float, amount: float, rate: Rate) -> float:
    """Seconds until a bucket at `level` holds `amount`."""
    if level >= amount:
        return 0.0
    return (amount - level) / rate.per_second if rate.per_second > 0 else float("inf")


def _describe(quota: RateQuota | None, limit: str) -> str:
    if limit == "requests_per_minute" and quota is not None:
        return f"{quota.requests_per_minute} requests per minute"
    if limit == "tokens_per_minute" and quota is not None:
        return f"{quota.tokens_per_minute} tokens per minute"
    return "the provider's reported rate limit"


def upstream_rate_limited(deployment: Deployment, limit: str, wait: float) -> GatewayError:
    """A deployment skipped for want of room under its provider's rate limit."""
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        UPSTREAM_RATE_LIMITED,
        f"{deployment.provider}: no room under the provider's rate limit for this call now",
        metadata={
            "provider": deployment.provider,
            "model": deployment.upstream_model,
            "limit": limit,
        },
        retry_after=wait,
        retryable=False,
        failover=True,
        upstream_fault=False,
        quota_violations=[
            QuotaViolation(f"deployment:{deployment.key}", _describe(deployment.rate_limit, limit))
        ],
    )


def _limits_unavailable(deployment: Deployment) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        LIMITS_UNAVAILABLE,
        "provider rate limits cannot be checked right now; try again shortly",
        metadata={"provider": deployment.provider, "model": deployment.upstream_model},
        retry_after=1.0,
        retryable=False,
        failover=True,
        upstream_fault=False,
    )
