"""Execution: attempts along a planned chain of deployments until one serves, every
attempt inside the caller's deadline.

For each deployment in turn: the context-window check (a prompt too long for it is
refused without asking it), the quota cool-down, the room under the provider's rate
limit (quotas.py: reserved before every request; none left skips the deployment) and
the circuit breaker, then tries with capped, fully jittered backoff (Retry-After as a
floor) while the provider's retry policy, its retry budget, the gateway's cap on
attempts and the deadline allow. The reservation of the attempt that served is left in
`record.quota_hold`, for the caller to settle with the usage.
A failure that may fail over moves on to the next deployment; a context-too-long
answer first adds the deployment's context_fallbacks to the chain (once per call).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import grpc
from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2

from service.errors import GatewayError, deadline_exceeded
from service.limits.estimate import input_tokens
from service.providers.base import CallContext, Deployment
from service.routing.attempt import Attempt, Attempts
from service.routing.breaker import CircuitBreaker
from service.routing.context import context_too_long
from service.routing.headroom import Need, need_of
from service.routing.planner import Check, Planner
from service.routing.quotas import NO_HOLD, QuotaHold, UpstreamQuotas, never_sent
from service.routing.record import CallRecord
from service.routing.refusals import (
    QUOTA_COOLING_DOWN,
    QUOTA_EXHAUSTED,
    circuit_open,
    exhausted,
    quota_cooling_down,
)
from service.routing.resilience import Resilience
from service.routing.stats import StatsBook

T = TypeVar("T")


async def _release(hold: QuotaHold | None) -> None:
    if hold is not None:
        await hold.release()


class Executor:
    def __init__(
        self,
        planner: Planner,
        attempts: Attempts,
        resilience: Resilience,
        stats: StatsBook,
        uniform: Callable[[float, float], float] = random.uniform,
        quotas: UpstreamQuotas | None = None,
    ) -> None:
        self.planner = planner
        self.attempts = attempts
        self.resilience = resilience
        self.stats = stats
        self._uniform = uniform
        self.quotas = quotas or UpstreamQuotas()

    async def run(
        self,
        chain: list[Deployment],
        ctx: CallContext,
        record: CallRecord,
        check: Check,
        attempt: Attempt[T],
        count_success: bool = True,
        operation: str = "chat",
        prompt: chat_pb2.ChatRequest | None = None,
        request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest | None = None,
    ) -> tuple[T, Deployment]:
        """Attempts along `chain` until one serves. A chat `prompt` is checked against
        each deployment's configured context window before it is sent; `request` (the
        prompt when not given) is what rate limits reserve for."""
        loop = asyncio.get_running_loop()
        errors: list[GatewayError] = []
        position = 0
        tokens = 0  # the prompt's estimate, once a deployment needs it
        context_fallbacks_added = False
        request = request if request is not None else prompt
        need: Need | None = None  # the request's need, once a rate limit asks for it

        async def reserve(deployment: Deployment) -> QuotaHold | None:
            """The request's reservation, or None (and the refusal noted) without room."""
            nonlocal need
            if not self.quotas.applies(deployment):
                return NO_HOLD
            if need is None:
                need = need_of(request) if request is not None else Need(0, 0)
            try:
                return await self.quotas.reserve(deployment, need)
            except GatewayError as refusal:
                record.tried.append(f"{deployment.key}:{refusal.reason}")
                errors.append(refusal)
                return None

        def widen(deployment: Deployment) -> bool:
            """After a context-too-long answer: the deployment's context_fallbacks come
            next (once per call). False when there are none to add."""
            nonlocal context_fallbacks_added
            if not deployment.context_fallbacks or context_fallbacks_added:
                return False
            context_fallbacks_added = True
            extra = self.planner.candidates(deployment.context_fallbacks, chain, check, ctx)
            chain[position:position] = extra
            return True

        while position < len(chain):
            deployment = chain[position]
            position += 1
            if prompt is not None and deployment.context_limit:
                tokens = tokens or input_tokens(prompt)
            if tokens > deployment.context_limit > 0:
                # As if the upstream had said so, without asking it.
                refusal = context_too_long(deployment, tokens)
                record.tried.append(f"{deployment.key}:{refusal.reason}")
                errors.append(refusal)
                if widen(deployment):
                    continue
                raise record.annotate(refusal)
            breaker = self.resilience.breaker(deployment)
            resting = breaker.quota_remaining()
            if resting > 0:
                record.tried.append(f"{deployment.key}:{QUOTA_COOLING_DOWN}")
                errors.append(quota_cooling_down(deployment, resting))
                continue
            hold = await reserve(deployment)
            if hold is None:
                continue  # no room under its rate limit: the next deployment, at once
            if not await self.resilience.admit(deployment, breaker):
                await hold.release()
                record.tried.append(f"{deployment.key}:CIRCUIT_OPEN")
                errors.append(circuit_open(deployment, breaker.open_remaining()))
                continue
            policy = self.resilience.policy(deployment.provider)
            budget = self.resilience.budget(deployment.provider)
            budget.record_call()
            tries = 0
            while True:
                if record.attempts >= self.resilience.max_total_attempts:
                    breaker.release()
                    await _release(hold)
                    raise record.annotate(exhausted(errors))
                if loop.time() + policy.min_attempt_time > ctx.deadline:
                    breaker.release()
                    await _release(hold)
                    raise record.annotate(deadline_exceeded(record.attempts))
                if hold is None:  # a retry is another request: it reserves again
                    hold = await reserve(deployment)
                    if hold is None:
                        breaker.release()
                        break
                tries += 1
                record.attempts += 1
                if tries > 1:
                    self.stats.retried(deployment.provider)
                # The provider's rate-limit headers are read from every response.
                actx = replace(ctx, observe_headers=self.quotas.observer(deployment))
                try:
                    result = await self.attempts.run(
                        deployment, actx, record, attempt, count_success, operation
                    )
                except GatewayError as error:
                    if error.local:
                        # Refused before any upstream request: no attempt was made.
                        record.attempts -= 1
                        breaker.release()
                        await _release(hold)
                        raise record.annotate(error) from None
                    if never_sent(error):
                        await hold.release()
                    else:
                        await hold.settle(None)  # the provider counts failed requests too
                    hold = None
                    record.tried.append(f"{deployment.key}:{error.reason}")
                    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        breaker.release()
                        raise record.annotate(error) from None
                    if self._quota_exhausted(deployment, breaker, error):
                        pass  # no circuit verdict: the deployment rests instead
                    elif error.failover and error.upstream_fault:
                        breaker.failure()
                    else:
                        breaker.release()
                    errors.append(error)
                    if error.reason == "CONTEXT_LENGTH_EXCEEDED" and widen(deployment):
                        break
                    if not error.failover:
                        raise record.annotate(error) from None
                    if not error.retryable or tries >= policy.attempts_for(error.reason):
                        break
                    delay = policy.delay(tries, error.retry_after, self._uniform)
                    if delay is None:  # the upstream asks for more than we wait
                        break
                    if loop.time() + delay + policy.min_attempt_time > ctx.deadline:
                        break  # no time for another try here: the fallback, now
                    if not budget.try_spend():
                        self.stats.retry_denied(deployment.provider)
                        break
                    await asyncio.sleep(delay)
                    if not breaker.allow():
                        break
                    continue
                except BaseException:
                    breaker.release()
                    raise
                else:
                    breaker.success()
                    record.quota_hold = hold
                    record.served_by = deployment
                    # Another deployment of the same alias is its failover, not a fallback.
                    record.fallback_used = deployment.alias != chain[0].alias
                    return result, deployment
        raise record.annotate(exhausted(errors))

    async def settle(self, record: CallRecord, usage: route_pb2.Usage | None) -> None:
        """Reconciles the serving request's rate-limit reservation with its usage."""
        hold, record.quota_hold = record.quota_hold, None
        if hold is not None:
            await hold.settle(usage)

    def _quota_exhausted(
        self, deployment: Deployment, breaker: CircuitBreaker, error: GatewayError
    ) -> bool:
        """After an out-of-quota answer: the deployment gets no calls for the provider's
        quota_cool_down, and the error says when that ends. False when the error is
        another one, or quota cool-downs are off."""
        if error.reason != QUOTA_EXHAUSTED:
            return False
        cool_down = self.resilience.quota_cool_down(deployment.provider)
        if cool_down <= 0:
            return False
        breaker.quota_exhausted(cool_down)
        error.retry_after = cool_down
        return True
