"""Policy between the servicer and the providers.

The router never speaks HTTP. For each call it builds the chain of deployments (the
alias, then its fallbacks), and runs attempts along it: retries of transient failures
with capped, fully jittered backoff (Retry-After as a floor), a retry budget per
provider, a circuit breaker per deployment (and a quota cool-down after the provider
said the account is out of quota), every attempt inside the caller's deadline.
Streams may be retried and moved to a fallback only until their first chunk; after
that they end with their final chunk or with a status that says they were cut.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message
from llmgateway.v1 import chat_pb2, embed_pb2, route_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.errors import GatewayError, deadline_exceeded, internal
from service.limits.estimate import input_tokens
from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.providers.upstream_errors import transport_failure
from service.routing.balancer import Balancer
from service.routing.breaker import CircuitBreaker
from service.routing.cache import ResponseCache
from service.routing.capabilities import check_chat, check_embed
from service.routing.coalesce import Coalescer
from service.routing.context import context_too_long
from service.routing.pricing import apply_cost
from service.routing.resilience import Resilience
from service.routing.stats import Outcome, StatsBook

T = TypeVar("T")
# An upstream's "the account is out of quota" (upstream_errors.py), and the gateway's
# refusal to call a deployment while it rests after one.
QUOTA_EXHAUSTED = "UPSTREAM_QUOTA_EXHAUSTED"
QUOTA_COOLING_DOWN = "QUOTA_COOLING_DOWN"
R = TypeVar("R", chat_pb2.ChatResponse, embed_pb2.EmbedResponse)
Check = Callable[[Deployment], None]
# Request metadata: "bypass" (neither cache nor coalescing) or "refresh" (store anew).
CACHE_CONTROL_KEY = "x-llm-cache"


@dataclass
class CallRecord:
    """What happened during one call: for the response, the error details and the audit."""

    attempts: int = 0
    tried: list[str] = field(default_factory=list)  # "provider/model:REASON", in order
    served_by: Deployment | None = None
    fallback_used: bool = False
    chunks_delivered: int = 0
    cache_hit: bool = False  # answered from the cache
    coalesced: bool = False  # answered by an identical call in flight

    def route(self, upstream_request_id: str = "") -> route_pb2.RouteInfo:
        assert self.served_by is not None
        return route_pb2.RouteInfo(
            provider=self.served_by.provider,
            upstream_model=self.served_by.upstream_model,
            attempts=self.attempts,
            fallback_used=self.fallback_used,
            upstream_request_id=upstream_request_id,
        )

    def annotate(self, error: GatewayError) -> GatewayError:
        error.with_metadata(attempts=str(self.attempts))
        if self.tried:
            error.with_metadata(tried=",".join(self.tried[-8:]))
        return error


@dataclass
class _Opened(Generic[T]):
    """A stream whose first chunk has arrived."""

    first: T
    rest: AsyncIterator[T]
    started: float


class Router:
    def __init__(
        self,
        registry: Registry,
        stats: StatsBook,
        resilience: Resilience,
        uniform: Callable[[float, float], float] = random.uniform,
        balancer: Balancer | None = None,
        cache: ResponseCache | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.resilience = resilience
        self._uniform = uniform
        self.balancer = balancer or Balancer()
        self.tracer = tracer or trace.NoOpTracer()
        self.cache = cache
        self.coalescer: Coalescer[Message] = Coalescer()

    # --- planning --------------------------------------------------------------------

    def _primary(self, model: str, check: Check) -> Deployment:
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

    def _chain(self, primary: Deployment, check: Check, ctx: CallContext) -> list[Deployment]:
        """The deployments of the alias asked for (in the balancer's order, taking its
        turn), then those of its fallbacks (ordered without taking theirs: most calls
        never reach them)."""
        chain = [d for d in self._balanced(primary) if d is primary or _fits(check, d, ctx)]
        return chain + self._candidates(primary.fallbacks, chain, check, ctx)

    def _balanced(self, deployment: Deployment, advance: bool = True) -> list[Deployment]:
        pool = self.registry.pool(deployment.alias)
        return [deployment] if pool is None else self.balancer.order(pool, advance)

    def _candidates(
        self, aliases: tuple[str, ...], chain: list[Deployment], check: Check, ctx: CallContext
    ) -> list[Deployment]:
        """The deployments of fallback aliases that are not in `chain` and fit the call."""
        found: list[Deployment] = []
        for alias_deployment in self.registry.chain(aliases):
            for candidate in self._balanced(alias_deployment, advance=False):
                fresh = candidate not in chain and candidate not in found
                if fresh and _fits(check, candidate, ctx):
                    found.append(candidate)
        return found

    def _named(self, route: route_pb2.RouteInfo, primary: Deployment) -> Deployment:
        """The deployment a route names, among those a call to `primary` could use."""
        aliases = (primary.alias, *primary.fallbacks, *primary.context_fallbacks)
        named = (route.provider, route.upstream_model)
        for alias_deployment in self.registry.chain(aliases) or [primary]:
            for member in self.registry.members(alias_deployment):
                if (member.deployment.provider, member.deployment.upstream_model) == named:
                    return member.deployment
        return primary

    # --- the attempt loop ------------------------------------------------------------

    async def _run(
        self,
        chain: list[Deployment],
        ctx: CallContext,
        record: CallRecord,
        check: Check,
        attempt: Callable[[Deployment, CallContext], Awaitable[T]],
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
            extra = self._candidates(deployment.context_fallbacks, chain, check, ctx)
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
                errors.append(_quota_cooling_down(deployment, resting))
                continue
            if not breaker.allow():
                record.tried.append(f"{deployment.key}:CIRCUIT_OPEN")
                errors.append(_circuit_open(deployment, breaker.open_remaining()))
                continue
            policy = self.resilience.policy(deployment.provider)
            budget = self.resilience.budget(deployment.provider)
            budget.record_call()
            tries = 0
            while True:
                if record.attempts >= self.resilience.max_total_attempts:
                    breaker.release()
                    raise record.annotate(_exhausted(errors))
                if loop.time() + policy.min_attempt_time > ctx.deadline:
                    breaker.release()
                    raise record.annotate(deadline_exceeded(record.attempts))
                tries += 1
                record.attempts += 1
                if tries > 1:
                    self.stats.retried(deployment.provider)
                try:
                    result = await self._attempt(
                        deployment, ctx, record, attempt, count_success, operation
                    )
                except GatewayError as error:
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
        raise record.annotate(_exhausted(errors))

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

    async def _attempt(
        self,
        deployment: Deployment,
        ctx: CallContext,
        record: CallRecord,
        attempt: Callable[[Deployment, CallContext], Awaitable[T]],
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
        attempt: Callable[[Deployment, CallContext], Awaitable[T]],
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
            self.balancer.finished(deployment)
            if outcome is not Outcome.SUCCESS or count_success:
                self.stats.finished(deployment.provider, outcome, loop.time() - started)

    # --- unary -----------------------------------------------------------------------

    async def chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> chat_pb2.ChatResponse:
        record = record or CallRecord()

        def check(d: Deployment) -> None:
            check_chat(request, d, streaming=False)

        async def attempt(d: Deployment, actx: CallContext) -> chat_pb2.ChatResponse:
            return await self.registry.provider(d.provider).chat(request, d, actx)

        return await self._unary(
            request, ctx, record, check, attempt, chat_pb2.ChatResponse, prompt=request
        )

    async def embed(
        self, request: embed_pb2.EmbedRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> embed_pb2.EmbedResponse:
        record = record or CallRecord()

        async def attempt(d: Deployment, actx: CallContext) -> embed_pb2.EmbedResponse:
            response = await self.registry.provider(d.provider).embed(request, d, actx)
            if len(response.embeddings) != len(request.inputs):
                raise transport_failure(
                    d.provider,
                    d.upstream_model,
                    "protocol",
                    f"{len(response.embeddings)} embeddings for {len(request.inputs)} inputs",
                )
            return response

        return await self._unary(
            request, ctx, record, check_embed, attempt, embed_pb2.EmbedResponse, "embeddings"
        )

    async def _unary(
        self,
        request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest,
        ctx: CallContext,
        record: CallRecord,
        check: Check,
        attempt: Callable[[Deployment, CallContext], Awaitable[R]],
        answer_type: type[R],
        operation: str = "chat",
        prompt: chat_pb2.ChatRequest | None = None,
    ) -> R:
        primary = self._primary(request.model, check)

        async def run() -> R:
            chain = self._chain(primary, check, ctx)  # only for calls that go upstream
            response, deployment = await self._run(
                chain, ctx, record, check, attempt, operation=operation, prompt=prompt
            )
            response.route.CopyFrom(record.route(response.route.upstream_request_id))
            apply_cost(response.usage, deployment.pricing)
            return response

        return await self._cached(request, primary, ctx, record, run, answer_type)

    # --- cache and coalescing ----------------------------------------------------------

    async def _cached(
        self,
        request: Message,
        primary: Deployment,
        ctx: CallContext,
        record: CallRecord,
        run: Callable[[], Awaitable[R]],
        answer_type: type[R],
    ) -> R:
        """`run()`, or the cached answer to the same request, or the answer of an
        identical call in flight. `x-llm-cache: bypass` skips the cache and coalescing;
        `refresh` skips reading the cache but stores the new answer.

        A call that joins another waits no longer than its own deadline; when the shared
        work failed for the first caller's deadline, it runs on its own time."""
        ttl = primary.cache_ttl
        if self.cache is None or ttl is None:
            return await run()
        mode = ctx.metadata.get(CACHE_CONTROL_KEY, "")
        if mode == "bypass":
            return await run()
        cache = self.cache
        key = cache.key(request, ctx.identity)
        if mode != "refresh":
            hit = cache.get(key, answer_type)
            if hit is not None:
                served = self._named(hit.route, primary)
                return _without_upstream(hit, served, record, cache_hit=True)

        async def work() -> Message:
            response = await run()
            cache.put(key, response, ttl)
            return response

        joining = key in self.coalescer
        try:
            async with asyncio.timeout_at(ctx.deadline):
                response, shared = await self.coalescer.run(key, work)
        except TimeoutError:
            raise deadline_exceeded(record.attempts) from None
        except GatewayError as error:
            if not joining:
                raise
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return await run()  # the first caller's deadline, not this one's
            raise error.copy() from None
        answer = answer_type()
        answer.CopyFrom(cast(R, response))  # each caller's own: the servicer changes it
        served = self._named(answer.route, primary)
        if shared:
            return _without_upstream(answer, served, record, coalesced=True)
        if record.served_by is None:  # the caller that started it left: this one owns it
            record.served_by = served
            record.attempts = answer.route.attempts
            record.fallback_used = answer.route.fallback_used
        return answer

    # --- streaming -------------------------------------------------------------------

    async def stream_chat(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord | None = None
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        record = record or CallRecord()
        loop = asyncio.get_running_loop()

        def check(d: Deployment) -> None:
            check_chat(request, d, streaming=True)

        async def open_stream(
            d: Deployment, actx: CallContext
        ) -> _Opened[chat_pb2.StreamChatResponse]:
            stream = self.registry.provider(d.provider).stream_chat(request, d, actx)
            started = loop.time()
            try:
                first = await _next_chunk(
                    stream, actx.deadline, d.timeouts.first_token, d, "first_token"
                )
            except BaseException:
                await _close(stream)
                raise
            if first is None:
                raise internal("the upstream stream ended before its first chunk")
            return _Opened(first, stream, started)

        opened, deployment = await self._run(
            self._chain(self._primary(request.model, check), check, ctx),
            ctx,
            record,
            check,
            open_stream,
            count_success=False,
            prompt=request,
        )
        started = opened.started
        route = record.route()
        stream = opened.rest
        chunk: chat_pb2.StreamChatResponse | None = opened.first
        finished = False
        outcome = Outcome.FAILURE
        breaker = self.resilience.breaker(deployment)
        self.balancer.started(deployment)  # the open stream is a call in flight
        try:
            while chunk is not None:
                if record.chunks_delivered == 0:
                    chunk.route.MergeFrom(route)
                if chunk.HasField("usage"):
                    chunk.route.MergeFrom(route)
                    apply_cost(chunk.usage, deployment.pricing)
                finished = finished or chunk.finish_reason != chat_pb2.FINISH_REASON_UNSPECIFIED
                record.chunks_delivered += 1
                yield chunk
                chunk = await _next_chunk(
                    stream, ctx.deadline, deployment.timeouts.idle, deployment, "idle"
                )
            if not finished:
                # Defence in depth: adapters raise on a cut stream themselves.
                raise internal("the upstream stream ended without a finish reason")
            outcome = Outcome.SUCCESS
            breaker.success()
        except GatewayError as error:
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome = Outcome.CANCELLED
            elif error.failover and error.upstream_fault:
                breaker.failure()
            error.retryable = False
            error.failover = False
            error.with_metadata(partialOutput="true", chunksDelivered=str(record.chunks_delivered))
            raise record.annotate(error) from None
        except (asyncio.CancelledError, GeneratorExit):
            outcome = Outcome.CANCELLED
            raise
        finally:
            self.balancer.finished(deployment)
            await _close(stream)
            self.stats.finished(deployment.provider, outcome, loop.time() - started)


def _without_upstream(
    response: R,
    served: Deployment,
    record: CallRecord,
    *,
    cache_hit: bool = False,
    coalesced: bool = False,
) -> R:
    """An answer this call got without an upstream call of its own: no attempts, no
    cost; the route still names the deployment that produced it."""
    route = response.route
    usage = response.usage
    route.attempts = 0
    route.cache_hit = cache_hit
    route.coalesced = coalesced
    if usage.HasField("cost_usd"):
        usage.cost_usd = 0.0
    record.cache_hit = cache_hit
    record.coalesced = coalesced
    record.fallback_used = route.fallback_used
    record.served_by = served
    return response


async def _next_chunk(
    stream: AsyncIterator[T],
    deadline: float,
    limit: float | None,
    deployment: Deployment,
    name: str,
) -> T | None:
    """The next chunk, or None at the end of the stream. The timeout is held only while
    waiting for the upstream, never across the caller's own work between chunks."""
    loop = asyncio.get_running_loop()
    until = deadline if limit is None else min(deadline, loop.time() + limit)
    try:
        async with asyncio.timeout_at(until):
            return await anext(stream)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        if until >= deadline:
            raise deadline_exceeded(0) from None
        raise transport_failure(
            deployment.provider, deployment.upstream_model, "timeout", name
        ) from None


async def _close(stream: AsyncIterator[object]) -> None:
    """Closes a provider's stream (and with it the upstream request) at once."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _fits(check: Check, deployment: Deployment, ctx: CallContext) -> bool:
    """May this fallback serve the call: is the caller allowed it, and can it do it?"""
    if not ctx.identity.may_use(deployment.alias):
        return False
    try:
        check(deployment)
    except GatewayError:
        return False
    return True


def _circuit_open(deployment: Deployment, remaining: float) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "CIRCUIT_OPEN",
        f"{deployment.provider}: failing fast while the circuit is open",
        metadata={"provider": deployment.provider, "model": deployment.upstream_model},
        retry_after=remaining,
        retryable=False,
        failover=True,
    )


def _quota_cooling_down(deployment: Deployment, remaining: float) -> GatewayError:
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


def _exhausted(errors: list[GatewayError]) -> GatewayError:
    """The error for a call whose every deployment failed over."""
    if not errors:
        return internal("no deployment could be tried")
    deployments = {
        e.metadata.get("provider", "") + "/" + e.metadata.get("model", "") for e in errors
    }
    if len(deployments) == 1:
        return errors[-1]  # one deployment: its own error (429 stays RESOURCE_EXHAUSTED)
    hints = [e.retry_after for e in errors if e.retry_after is not None]
    if all(e.reason in (QUOTA_EXHAUSTED, QUOTA_COOLING_DOWN) for e in errors):
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
