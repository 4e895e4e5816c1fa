"""One attempt at one deployment: a client span of its own, the attempt's timeouts
inside the caller's deadline, and the counts it leaves behind (calls in flight for
the balancer, outcomes and latency for the stats). Retries, fallbacks and breakers
are the executor's; this module runs a single try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.errors import GatewayError, deadline_exceeded
from service.providers.base import CallContext, Deployment
from service.providers.upstream_errors import transport_failure
from service.routing.balancer import Balancer
from service.routing.record import CallRecord
from service.routing.stats import Outcome, StatsBook

T = TypeVar("T")
# What one try does at a deployment: the call itself, with the attempt's context.
Attempt = Callable[[Deployment, CallContext], Awaitable[T]]


class Attempts:
    def __init__(self, stats: StatsBook, balancer: Balancer, tracer: trace.Tracer) -> None:
        self.stats = stats
        self.balancer = balancer
        self.tracer = tracer

    async def run(
        self,
        deployment: Deployment,
        ctx: CallContext,
        record: CallRecord,
        attempt: Attempt[T],
        count_success: bool,
        operation: str,
    ) -> T:
        """One try, in its own client span (a child of the call's server span)."""
        span = self.tracer.start_span(
            f"{operation} {deployment.upstream_model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": deployment.provider_type,
                "gen_ai.request.model": deployment.upstream_model,
                "llm_gateway.provider": deployment.provider,
                "llm_gateway.attempt": record.attempts,
            },
        )
        try:
            return await self._try(deployment, ctx, record, attempt, count_success)
        except GatewayError as error:
            span.set_attribute("error.type", error.reason)
            status = error.metadata.get("upstreamStatus", "")
            if status.isdigit():
                span.set_attribute("http.response.status_code", int(status))
            span.set_status(Status(StatusCode.ERROR, error.reason))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            span.set_attribute("error.type", "cancelled")
            raise
        finally:
            span.end()

    async def _try(
        self,
        deployment: Deployment,
        ctx: CallContext,
        record: CallRecord,
        attempt: Attempt[T],
        count_success: bool,
    ) -> T:
        """One try: bounded by the deadline and the attempt's total timeout. A stream's
        successful opening is counted when the stream ends (count_success=False)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        until = min(ctx.deadline, started + deployment.timeouts.total)
        attempt_ctx = replace(ctx, attempt=record.attempts, deadline=until)
        self.stats.started(deployment.provider)
        self.balancer.started(deployment)
        outcome = Outcome.FAILURE
        try:
            async with asyncio.timeout_at(until):
                result = await attempt(deployment, attempt_ctx)
            outcome = Outcome.SUCCESS
            return result
        except TimeoutError:
            if loop.time() >= ctx.deadline - 0.001:
                outcome = Outcome.CANCELLED
                raise deadline_exceeded(record.attempts) from None
            raise transport_failure(
                deployment.provider, deployment.upstream_model, "timeout", "total"
            ) from None
        except (asyncio.CancelledError, GeneratorExit):
            outcome = Outcome.CANCELLED
            raise
        finally:
            elapsed = loop.time() - started
            self.balancer.finished(deployment)
            if outcome is not Outcome.CANCELLED:
                # A stream's attempt ends at its first chunk: its latency is that time.
                self.balancer.observed(deployment, elapsed, outcome is Outcome.SUCCESS)
            if outcome is not Outcome.SUCCESS or count_success:
                self.stats.finished(deployment.provider, outcome, elapsed)
                self.stats.fleet.attempt(deployment, outcome, elapsed)
            else:
                self.stats.fleet.first_chunk(deployment, elapsed)
