"""CountTokens: the input tokens a chat request would use at the deployment its alias
would serve it with.

The provider's own count when it has an endpoint for it (Anthropic, Gemini, Vertex AI):
one call along the alias's own deployments (load-balanced members, never its fallback
aliases, whose tokenizers differ), with the executor's retries, breakers and deadline.
Otherwise the gateway's estimate (service/limits/estimate.py), with no upstream call.
"""

from __future__ import annotations

from llmgateway.v1 import chat_pb2, count_tokens_pb2, route_pb2

from service.limits.estimate import input_tokens
from service.providers.base import CallContext, Deployment
from service.providers.registry import Registry
from service.routing.capabilities import check_chat
from service.routing.executor import Executor
from service.routing.planner import Planner
from service.routing.record import CallRecord


class TokenCounts:
    def __init__(self, registry: Registry, planner: Planner, executor: Executor) -> None:
        self.registry = registry
        self.planner = planner
        self.executor = executor

    async def count(
        self, request: chat_pb2.ChatRequest, ctx: CallContext, record: CallRecord
    ) -> count_tokens_pb2.CountTokensResponse:
        def check(d: Deployment) -> None:
            check_chat(request, d, streaming=False)

        primary = self.planner.primary(request.model, check)
        chain = self.planner.chain(primary, check, ctx)
        counting = [
            d
            for d in chain
            if d.alias == chain[0].alias and self.registry.provider(d.provider).counts_tokens
        ]
        if not counting:
            chosen = chain[0]
            record.served_by = chosen
            return count_tokens_pb2.CountTokensResponse(
                input_tokens=input_tokens(request),
                estimated=True,
                route=route_pb2.RouteInfo(
                    provider=chosen.provider, upstream_model=chosen.upstream_model
                ),
            )

        async def attempt(d: Deployment, actx: CallContext) -> tuple[int, str]:
            return await self.registry.provider(d.provider).count_tokens(request, d, actx)

        (tokens, request_id), _ = await self.executor.run(
            counting, ctx, record, check, attempt, operation="count_tokens"
        )
        return count_tokens_pb2.CountTokensResponse(
            input_tokens=tokens, estimated=False, route=record.route(request_id)
        )
