"""Embed batching: Embed calls to the same deployment that arrive within a short window
go upstream as one request (the alias's `batch`), and each caller gets its own part of
the answer (batch_split.py).

- A batch gathers calls with the same deployment, the same `dimensions` and the same
  tenant; it is sent when its window (counted from its first call) ends, or at once
  when it holds `max_inputs` inputs (the provider kind's own limit at most: OpenAI
  2048, Gemini 100). A call that would overflow it sends it and starts the next one.
- A call that cannot wait is sent alone, at once: one with at least `max_inputs` inputs
  of its own, or with less than the window plus SEND_ALONE_RESERVE (0.5 s) left before
  its deadline.
- A caller that leaves (cancelled, or its deadline reached) before its batch is sent
  takes its inputs out of it; after it was sent, its part of the answer is discarded,
  and when every caller of a batch has left, the upstream request is cancelled.
- An upstream failure reaches every caller of the batch, each as its own copy of the
  error (same status, reason and details); only the first copy counts against the
  deployment's circuit breaker, since it was one upstream failure. Each caller's own
  retry and failover then go on as usual (a retry may join another batch).

Batching sits inside one attempt: the executor's retries, breakers, deadlines and
stats see each caller's attempt as if it had gone alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from llmgateway.v1 import embed_pb2

from service.errors import GatewayError
from service.limits.estimate import input_tokens
from service.providers.base import CallContext, Deployment, EmbedBatching, Provider
from service.providers.upstream_errors import transport_failure
from service.routing.batch_split import split_response

SEND_ALONE_RESERVE = 0.5  # seconds a batched call keeps for its upstream request

BatchKey = tuple[str, str, int | None, str]


def limit_of(settings: EmbedBatching, provider: Provider) -> int:
    """Most inputs in one batch: the configured maximum within the provider's own."""
    own = provider.max_embed_inputs
    return min(settings.max_inputs, own) if settings.max_inputs else own


@dataclass
class _Member:
    request: embed_pb2.EmbedRequest
    ctx: CallContext
    answer: asyncio.Future[embed_pb2.EmbedResponse]
    left: bool = False


@dataclass
class _Batch:
    deployment: Deployment
    provider: Provider
    members: list[_Member] = field(default_factory=list)
    inputs: int = 0
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> bool:
        return self.task is not None


class EmbedBatcher:
    def __init__(self) -> None:
        self._open: dict[BatchKey, _Batch] = {}
        self.upstream_requests = 0  # batches sent (a call sent alone counts as one)

    def waiting(self) -> int:
        """Inputs in batches not sent yet."""
        return sum(batch.inputs for batch in self._open.values())

    async def embed(
        self,
        provider: Provider,
        request: embed_pb2.EmbedRequest,
        deployment: Deployment,
        ctx: CallContext,
    ) -> embed_pb2.EmbedResponse:
        settings = deployment.batch
        assert settings is not None
        loop = asyncio.get_running_loop()
        limit = limit_of(settings, provider)
        left = ctx.deadline - loop.time()
        if len(request.inputs) >= limit or left < settings.window + SEND_ALONE_RESERVE:
            self.upstream_requests += 1
            return await provider.embed(request, deployment, ctx)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        key: BatchKey = (deployment.alias, deployment.key, dimensions, ctx.identity.tenant_key)
        batch = self._open.get(key)
        if batch is not None and batch.inputs + len(request.inputs) > limit:
            self._send(key, batch)
            batch = None
        if batch is None:
            batch = _Batch(deployment, provider)
            self._open[key] = batch
            batch.timer = loop.call_later(settings.window, self._send, key, batch)
        member = _Member(request, ctx, loop.create_future())
        batch.members.append(member)
        batch.inputs += len(request.inputs)
        if batch.inputs >= limit:
            self._send(key, batch)
        try:
            return await asyncio.shield(member.answer)
        except asyncio.CancelledError:
            self._leave(key, batch, member)
            raise

    def _leave(self, key: BatchKey, batch: _Batch, member: _Member) -> None:
        member.left = True
        if not member.answer.done():
            member.answer.cancel()
        elif not member.answer.cancelled():
            member.answer.exception()  # answered as it left: nobody reads it now
        if not batch.sent:
            batch.members.remove(member)
            batch.inputs -= len(member.request.inputs)
            if not batch.members:
                if batch.timer is not None:
                    batch.timer.cancel()
                if self._open.get(key) is batch:
                    del self._open[key]
        elif batch.task is not None and all(m.left for m in batch.members):
            batch.task.cancel()

    def _send(self, key: BatchKey, batch: _Batch) -> None:
        if batch.sent:
            return
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        self.upstream_requests += 1
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        members = list(batch.members)
        first = members[0]
        combined = embed_pb2.EmbedRequest(
            model=first.request.model,
            inputs=[text for m in members for text in m.request.inputs],
        )
        if first.request.HasField("dimensions"):
            combined.dimensions = first.request.dimensions
        # The upstream request lasts as long as the latest caller may wait.
        ctx = replace(first.ctx, deadline=max(m.ctx.deadline for m in members))
        deployment = batch.deployment
        try:
            response = await batch.provider.embed(combined, deployment, ctx)
            try:
                parts = split_response(
                    response,
                    [len(m.request.inputs) for m in members],
                    [input_tokens(m.request) for m in members],
                )
            except ValueError as exc:
                raise transport_failure(
                    deployment.provider, deployment.upstream_model, "protocol", str(exc)
                ) from None
        except GatewayError as error:
            counted = False
            for member in members:
                if member.answer.done():
                    continue
                copy = error.copy()
                copy.upstream_fault = error.upstream_fault and not counted
                counted = True
                member.answer.set_exception(copy)
            return
        except asyncio.CancelledError:
            for member in members:
                member.answer.cancel()
            raise
        except Exception as exc:  # every caller hears of it, as if it had gone alone
            for member in members:
                if not member.answer.done():
                    member.answer.set_exception(exc)
            return
        for member, part in zip(members, parts, strict=True):
            if not member.answer.done():
                member.answer.set_result(part)
