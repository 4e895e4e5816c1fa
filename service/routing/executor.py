"""Execution: attempts along a planned chain of deployments until one serves, every
attempt inside the caller's deadline.

For each deployment in turn: the context-window check (a prompt too long for it is
refused without asking it), the quota cool-down and the circuit breaker, then tries
with capped, fully jittered backoff (Retry-After as a floor) while the provider's
retry policy, its retry budget, the gateway's cap on attempts and the deadline allow.
A failure that may fail over moves on to the next deployment; a context-too-long
answer first adds the deployment's context_fallbacks to the chain (once per call).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TypeVar

import grpc
from llmgateway.v1 import chat_pb2

from service.errors import GatewayError, deadline_exceeded
from service.limits.estimate import input_tokens
from service.providers.base import CallContext, Deployment
from service.routing.attempt import Attempt, Attempts
from service.routing.breaker import CircuitBreaker
from service.routing.context import context_too_long
from service.routing.planner import Check, Planner
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


class Executor:
    def __init__(
        self,
        planner: Planner,
        attempts: Attempts,
        resilience: Resilience,
        stats: StatsBook,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.planner = planner
        self.attempts = attempts
        self.resilience = resilience
        self.stats = stats
        self._uniform = uniform

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
    ) -> tuple[T, Deployment]:
        """Attempts along `chain` until one serves. A chat `prompt` is checked against
        each deployment's configured context window before it is sent."""
        loop = asyncio.get_running_loop()
        errors: list[GatewayError] = []
        position = 0
        tokens = 0  # the prompt's estimate, once a deployment needs it
        context_fallbacks_added = False

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
            if not breaker.allow():
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
                    raise record.annotate(exhausted(errors))
                if loop.time() + policy.min_attempt_time > ctx.deadline:
                    breaker.release()
                    raise record.annotate(deadline_exceeded(record.attempts))
                tries += 1
                record.attempts += 1
                if tries > 1:
                    self.stats.retried(deployment.provider)
                try:
                    result = await self.attempts.run(
                        deployment, ctx, record, attempt, count_success, operation
                    )
                except GatewayError as error:
                    if error.local:
                        # Refused before any upstream request: no attempt was made.
                        record.attempts -= 1
                        breaker.release()
                        raise record.annotate(error) from None
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
                    record.served_by = deployment
                    # Another deployment of the same alias is its failover, not a fallback.
                    record.fallback_used = deployment.alias != chain[0].alias
                    return result, deployment
        raise record.annotate(exhausted(errors))

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
