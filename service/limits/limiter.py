"""Rate limits and spend budgets per subject and per tenant.

`Limiter.admit` runs before a call and either raises a RESOURCE_EXHAUSTED
GatewayError or returns a `Reservation`; `Reservation.settle` runs after the call
with its usage. For the subject, then for the tenant (when the caller has one), the
checks are, in order: the budget of the current UTC period, requests per minute,
tokens per minute (charged with an estimate). A refused call consumes nothing: what
was taken before the refusal is given back.

Budgets are checked at admission and charged at settlement, when the cost is known:
calls admitted while the budget still had room all finish and are all counted, so a
budget can be overshot by the calls in flight when it is reached.

When the store cannot answer (a shared store during an outage), the call is let
through unlimited or refused with UNAVAILABLE (LIMITS_UNAVAILABLE), as configured;
every such failure is counted in `Limiter.failures` and logged. The spend of a call let
through is not forgotten: its cost and token usage, which the store could not take at
settlement, are kept (pending.py) and charged by `Limiter.charge_pending` once it
answers again (token usage only within its minute).

Subjects and tenants are those of one issuer: the state of each (buckets, spend) is
keyed by issuer and name, so that the same `sub` or tenant claim from two issuers
never shares, and cannot exhaust, the other's limits. Which limits apply: the issuer's
own override for the name (`limits.issuers[iss].subjects`), else the override for the
bare name (`limits.subjects`, meaning that subject from any issuer), else the default.
An override replaces the default as a whole; zero or unset fields mean no limit.
Callers without authentication are limited as the subject "anonymous" (of no issuer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import route_pb2

from service.auth.identity import Identity, scoped
from service.errors import GatewayError, QuotaViolation
from service.limits import budgets
from service.limits.buckets import Rate
from service.limits.budgets import Period
from service.limits.pending import DEFAULT_MAX_KEYS, PendingSpends
from service.limits.store import InMemoryLimitStore, LimitStore, LimitStoreError

log = logging.getLogger(__name__)

ANONYMOUS_SUBJECT = "anonymous"
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
CALLER_RATE_LIMITED = "CALLER_RATE_LIMITED"
LIMITS_UNAVAILABLE = "LIMITS_UNAVAILABLE"
# A failing store is logged at most this often; every failure is counted.
FAILURE_LOG_INTERVAL = 10.0
# Spends are kept this long after their period ends (replicas' clocks may differ).
SPEND_TTL_SLACK = 3600.0
# Token usage the store could not take is charged later only within this long: the
# minute of the bucket it belongs to.
TOKEN_CHARGE_WINDOW = 60.0


@dataclass(frozen=True)
class Limits:
    """One LimitConfig, checked: 0 or None means no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_nanos: int | None = None
    period: Period = Period.MONTH

    @classmethod
    def from_config(cls, config: config_pb2.LimitConfig) -> Limits:
        return cls(
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            budget_nanos=budgets.budget_nanos(config.budget_usd),
            period=Period.from_config(config.budget_period),
        )

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.budget_nanos)


@dataclass(frozen=True)
class _Scope:
    """A subject or a tenant of one issuer, with the limits that apply to it."""

    kind: str  # "subject" or "tenant"
    issuer: str
    name: str
    limits: Limits

    @property
    def label(self) -> str:
        """The QuotaFailure subject, as the caller knows itself."""
        return f"{self.kind}:{self.name}"

    @property
    def stem(self) -> str:
        """The stem of the store keys: kind, issuer and name."""
        return f"{self.kind}:{scoped(self.issuer, self.name)}"

    @property
    def spoken(self) -> str:
        return f'{self.kind} "{self.name}"'

    def budget_key(self, period_key: str) -> str:
        return f"usd:{self.stem}:{period_key}"


class StoreFailures:
    """What the limiter does when its store fails, and how often it has failed."""

    def __init__(self, deny: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.deny = deny
        self.count = 0
        self._clock = clock
        self._logged_at: float | None = None

    def record(self, error: LimitStoreError, during: str) -> None:
        self.count += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= FAILURE_LOG_INTERVAL:
            self._logged_at = now
            log.warning(
                "limit store failed",
                extra={
                    "fields": {
                        "during": during,
                        "error": str(error),
                        "failures_total": self.count,
                        "calls": "refused" if self.deny else "let through unlimited",
                    }
                },
            )


@dataclass(frozen=True)
class _Charge:
    """What one bucket was charged at admission."""

    key: str
    amount: float
    rate: Rate


class Reservation:
    """What one admitted call holds: its tokens-per-minute charges and the budgets its
    cost goes to. Settle it once the call is over."""

    def __init__(
        self,
        *,
        store: LimitStore,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        failures: StoreFailures,
        pending: PendingSpends,
        estimated_tokens: int = 0,
        token_charges: Iterable[_Charge] = (),
        budget_scopes: Iterable[_Scope] = (),
        unchecked_buckets: Iterable[_Charge] = (),
    ) -> None:
        self.estimated_tokens = estimated_tokens
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock
        self._failures = failures
        self._pending = pending
        self._token_charges = tuple(token_charges)
        self._budget_scopes = tuple(budget_scopes)
        # Tokens-per-minute buckets not charged at admission (the store failed): the
        # call's whole usage goes to them at settlement.
        self._unchecked_buckets = tuple(unchecked_buckets)
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def settle(self, usage: route_pb2.Usage | None) -> None:
        """Reconciles the call with its usage; later calls do nothing.

        Tokens per minute: the estimate charged at admission is replaced by
        `usage.total_tokens` (more: the bucket may go into debt, which delays later
        calls; less: the difference is given back). Cost: `usage.cost_usd`, when set,
        is added to the budgets of the subject and the tenant for the current period.

        `usage` None means the call failed before its usage was known, and a usage
        without any token count is taken to mean the same. The estimate then stays
        charged: the upstream may have done the work anyway (a timeout or a
        cut stream after generation), and giving it back would let a caller who
        cancels on purpose use tokens for free. Without `cost_usd`, nothing is added
        to the budgets. Spend the store cannot take now is kept and added later.
        """
        if self._settled:
            return
        self._settled = True
        if usage is None:
            return
        try:
            await self._reconcile_tokens(usage)
        except LimitStoreError as error:
            self._failures.record(error, "settlement")
        await self._charge_unchecked(usage)
        await self._charge(usage)

    async def _reconcile_tokens(self, usage: route_pb2.Usage) -> None:
        actual = usage.total_tokens or usage.input_tokens + usage.output_tokens
        delta = actual - self.estimated_tokens
        if actual > 0 and delta and self._token_charges:
            now = self._clock()
            for charge in self._token_charges:
                await self._store.adjust(charge.key, delta, charge.rate, now)

    async def _charge_unchecked(self, usage: route_pb2.Usage) -> None:
        actual = usage.total_tokens or usage.input_tokens + usage.output_tokens
        if actual <= 0:
            return
        for bucket in self._unchecked_buckets:
            try:
                await self._store.adjust(bucket.key, actual, bucket.rate, self._clock())
            except LimitStoreError as error:
                self._failures.record(error, "settlement")
                expires = self._wall_clock() + TOKEN_CHARGE_WINDOW
                self._pending.add(bucket.key, actual, expires, bucket.rate)

    async def _charge(self, usage: route_pb2.Usage) -> None:
        if not usage.HasField("cost_usd") or not self._budget_scopes:
            return
        nanos = budgets.to_nanos(usage.cost_usd)
        if not nanos:
            return
        wall = self._wall_clock()
        for scope in self._budget_scopes:
            period = budgets.window(scope.limits.period, wall)
            ttl = period.remaining(wall) + SPEND_TTL_SLACK
            key = scope.budget_key(period.key)
            try:
                await self._store.add_spend(key, nanos, ttl)
            except LimitStoreError as error:
                self._failures.record(error, "settlement")
                self._pending.add(key, nanos, wall + ttl)


class Limiter:
    def __init__(
        self,
        *,
        subject_default: Limits,
        tenant_default: Limits,
        subjects: Mapping[str, Limits],
        tenants: Mapping[str, Limits],
        clock: Callable[[], float],
        issuer_subjects: Mapping[str, Mapping[str, Limits]] | None = None,
        issuer_tenants: Mapping[str, Mapping[str, Limits]] | None = None,
        wall_clock: Callable[[], float],
        store: LimitStore,
        deny_on_store_failure: bool = False,
        max_pending_spends: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._defaults = {"subject": subject_default, "tenant": tenant_default}
        self._overrides = {"subject": dict(subjects), "tenant": dict(tenants)}
        self._issuer_overrides = {
            "subject": {iss: dict(names) for iss, names in (issuer_subjects or {}).items()},
            "tenant": {iss: dict(names) for iss, names in (issuer_tenants or {}).items()},
        }
        self._clock = clock
        self._wall_clock = wall_clock
        self._store = store
        self.failures = StoreFailures(deny_on_store_failure, clock)
        self.pending = PendingSpends(max_pending_spends)
        self._enabled = any(
            limits.any
            for limits in (
                subject_default,
                tenant_default,
                *subjects.values(),
                *tenants.values(),
                *(v for names in (issuer_subjects or {}).values() for v in names.values()),
                *(v for names in (issuer_tenants or {}).values() for v in names.values()),
            )
        )

    @classmethod
    def from_config(
        cls,
        config: config_pb2.LimitsConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        store: LimitStore | None = None,
        store_config: config_pb2.RedisStoreConfig | None = None,
    ) -> Limiter:
        """`clock` times the per-minute buckets, `wall_clock` (Unix time) places spend
        in its UTC day or month. Without a store, state is kept in this process.
        `store_config` is the shared store's (default: `config.redis`)."""
        shared = store_config if store_config is not None else config.redis
        deny = shared.on_failure == config_pb2.STORE_FAILURE_MODE_DENY
        return cls(
            subject_default=Limits.from_config(config.subject),
            tenant_default=Limits.from_config(config.tenant),
            subjects={name: Limits.from_config(c) for name, c in config.subjects.items()},
            tenants={name: Limits.from_config(c) for name, c in config.tenants.items()},
            issuer_subjects={
                issuer: {name: Limits.from_config(c) for name, c in scoped.subjects.items()}
                for issuer, scoped in config.issuers.items()
            },
            issuer_tenants={
                issuer: {name: Limits.from_config(c) for name, c in scoped.tenants.items()}
                for issuer, scoped in config.issuers.items()
            },
            clock=clock,
            wall_clock=wall_clock,
            store=store if store is not None else InMemoryLimitStore(clock),
            deny_on_store_failure=deny,
            max_pending_spends=(
                shared.max_pending_spends
                if shared.HasField("max_pending_spends")
                else DEFAULT_MAX_KEYS
            ),
        )

    @property
    def enabled(self) -> bool:
        """False when no limit of any kind is configured: admit then does nothing."""
        return self._enabled

    def limits_for(self, kind: str, name: str, issuer: str = "") -> Limits:
        """The limits of a subject or tenant of `issuer`: the issuer's override for the
        name, else the bare name's override, else the default."""
        own = self._issuer_overrides[kind].get(issuer, {}).get(name)
        if own is not None:
            return own
        return self._overrides[kind].get(name, self._defaults[kind])

    def _scopes(self, identity: Identity) -> list[_Scope]:
        subject = _subject_name(identity)
        issuer = identity.issuer if identity.authenticated else ""
        scopes = [_Scope("subject", issuer, subject, self.limits_for("subject", subject, issuer))]
        if identity.tenant:
            tenant = identity.tenant
            scopes.append(
                _Scope("tenant", issuer, tenant, self.limits_for("tenant", tenant, issuer))
            )
        return [scope for scope in scopes if scope.limits.any]

    async def admit(self, identity: Identity, estimated_tokens: int) -> Reservation:
        """Admits a call estimated at `estimated_tokens`, or raises RESOURCE_EXHAUSTED
        (BUDGET_EXCEEDED or CALLER_RATE_LIMITED) without consuming anything."""
        estimate = max(0, estimated_tokens)
        if not self._enabled:
            return self._reservation(estimate, (), ())
        scopes = self._scopes(identity)
        metadata = {"subject": _subject_name(identity)}
        if identity.authenticated and identity.issuer:
            metadata["issuer"] = identity.issuer
        if identity.tenant:
            metadata["tenant"] = identity.tenant
        taken: list[_Charge] = []
        token_charges: list[_Charge] = []
        try:
            for scope in scopes:
                limits = scope.limits
                if limits.budget_nanos is not None:
                    await self._check_budget(scope, limits.budget_nanos, metadata)
                rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
                if rpm:
                    await self._take(scope, "requests", rpm, 1, metadata, taken)
                if tpm:
                    charge = await self._take(scope, "tokens", tpm, estimate, metadata, taken)
                    token_charges.append(charge)
        except LimitStoreError as error:
            self.failures.record(error, "admission")
            await self._give_back(taken)
            if self.failures.deny:
                raise _limits_unavailable() from None
            # Let through unchecked, but its spend still counts once it is known.
            unchecked = [
                _Charge(f"tokens:{scope.stem}", 0, Rate.per_minute(scope.limits.tokens_per_minute))
                for scope in scopes
                if scope.limits.tokens_per_minute
            ]
            return self._reservation(estimate, (), _budget_scopes(scopes), unchecked)
        except BaseException:
            await self._give_back(taken)
            raise
        return self._reservation(estimate, token_charges, _budget_scopes(scopes))

    def _reservation(
        self,
        estimate: int,
        token_charges: Iterable[_Charge],
        budget_scopes: Iterable[_Scope],
        unchecked_buckets: Iterable[_Charge] = (),
    ) -> Reservation:
        return Reservation(
            store=self._store,
            clock=self._clock,
            wall_clock=self._wall_clock,
            failures=self.failures,
            pending=self.pending,
            estimated_tokens=estimate,
            token_charges=token_charges,
            budget_scopes=budget_scopes,
            unchecked_buckets=unchecked_buckets,
        )

    async def charge_pending(self) -> None:
        """Charges the spend and token usage kept during a store failure, in one pass;
        what the store still cannot take is kept for the next one."""
        if not len(self.pending):
            return
        wall = self._wall_clock()
        entries = self.pending.take(wall)
        for index, entry in enumerate(entries):
            try:
                if entry.rate is None:
                    await self._store.add_spend(entry.key, entry.amount, entry.expires - wall)
                else:
                    await self._store.adjust(entry.key, entry.amount, entry.rate, self._clock())
            except LimitStoreError:
                self.pending.restore(entries[index:])
                return
            except BaseException:
                self.pending.restore(entries[index:])
                raise
            self.pending.charged_one(entry)

    async def charge_pending_every(self, interval: float) -> None:
        """`charge_pending` every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.charge_pending()
            except Exception:  # the next pass tries again; a bug must not end the loop
                log.exception("charging pending spend failed")

    async def _check_budget(self, scope: _Scope, budget: int, metadata: Mapping[str, str]) -> None:
        wall = self._wall_clock()
        period = budgets.window(scope.limits.period, wall)
        spent = await self._store.spent(scope.budget_key(period.key))
        if budgets.exhausted(spent, budget):
            raise _budget_exceeded(scope, metadata, budget, spent, period, wall)

    async def _take(
        self,
        scope: _Scope,
        unit: str,
        per_minute: int,
        amount: int,
        metadata: Mapping[str, str],
        taken: list[_Charge],
    ) -> _Charge:
        """Takes `amount` from the scope's `unit`-per-minute bucket and adds the charge to
        `taken`, or raises CALLER_RATE_LIMITED."""
        charge = _Charge(f"{unit}:{scope.stem}", amount, Rate.per_minute(per_minute))
        decision = await self._store.take(charge.key, charge.amount, charge.rate, self._clock())
        if not decision.allowed:
            raise _rate_limited(scope, metadata, unit, per_minute, amount, decision.retry_after)
        taken.append(charge)
        return charge

    async def _give_back(self, taken: list[_Charge]) -> None:
        now = self._clock()
        try:
            for charge in reversed(taken):
                await self._store.adjust(charge.key, -charge.amount, charge.rate, now)
        except LimitStoreError as error:
            self.failures.record(error, "giving back")


def _budget_scopes(scopes: Iterable[_Scope]) -> list[_Scope]:
    return [scope for scope in scopes if scope.limits.budget_nanos is not None]


def _subject_name(identity: Identity) -> str:
    """The subject limits apply to; "anonymous" without authentication."""
    if not identity.authenticated or not identity.subject:
        return ANONYMOUS_SUBJECT
    return identity.subject


def _budget_exceeded(
    scope: _Scope,
    metadata: Mapping[str, str],
    budget: int,
    spent: int,
    period: budgets.Window,
    wall: float,
) -> GatewayError:
    adjective = scope.limits.period.adjective
    unit = "day" if scope.limits.period is Period.DAY else "month"
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        BUDGET_EXCEEDED,
        f"{scope.spoken} has spent its {adjective} budget of {budgets.format_usd(budget)}",
        metadata={**metadata, "limit": "budget_usd"},
        retry_after=period.remaining(wall),
        quota_violations=[
            QuotaViolation(
                scope.label,
                f"spent {budgets.format_usd(spent)} of the {budgets.format_usd(budget)} budget "
                f"for the UTC {unit} {period.key}",
            )
        ],
    )


def _rate_limited(
    scope: _Scope,
    metadata: Mapping[str, str],
    unit: str,
    per_minute: int,
    amount: int,
    retry_after: float,
) -> GatewayError:
    noun = unit if per_minute != 1 else unit.removesuffix("s")
    limit = f"{per_minute} {noun} per minute"
    description = limit if unit == "requests" else f"{limit}; this call is estimated at {amount}"
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        CALLER_RATE_LIMITED,
        f"{scope.spoken} is over its limit of {limit}",
        metadata={**metadata, "limit": f"{unit}_per_minute"},
        retry_after=retry_after,
        quota_violations=[QuotaViolation(scope.label, description)],
    )


def _limits_unavailable() -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        LIMITS_UNAVAILABLE,
        "rate limits cannot be checked right now; try again shortly",
        retry_after=1.0,
    )
