"""ProviderService: validate, authorize, admit, hand to the router, return the result.

The only place that ends an RPC with an error status. Any GatewayError becomes its
google.rpc.Status; anything unexpected becomes a generic INTERNAL (details logged,
never sent). What happened is noted in the call state for the audit record.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import (
    chat_pb2,
    count_tokens_pb2,
    embed_pb2,
    models_pb2,
    provider_service_pb2,
    provider_service_pb2_grpc,
    route_pb2,
)

from service.auth.identity import ANONYMOUS, Identity
from service.callstate import CallState, call_state
from service.errors import GatewayError, internal, printable, to_rpc_status
from service.limits import Limiter, Reservation, estimate_tokens
from service.providers.base import CallContext
from service.routing.router import CallRecord, Router
from service.validation import validate_chat, validate_embed

log = logging.getLogger(__name__)
T = TypeVar("T")
DEADLINE_MARGIN = 0.25  # at most; 10 % of the budget, at least 50 ms

# Answers GetProviderStats for a provider name ("" for all): the whole server's view.
ProviderStatsReader = Callable[[str], Awaitable[models_pb2.GetProviderStatsResponse]]
_SERVICE = provider_service_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
DEFAULT_METHOD_SCOPES = {
    f"/{_SERVICE}/Chat": "chat",
    f"/{_SERVICE}/StreamChat": "chat",
    f"/{_SERVICE}/CountTokens": "chat",
    f"/{_SERVICE}/Embed": "embed",
    f"/{_SERVICE}/ListModels": "models:read",
    f"/{_SERVICE}/GetProviderStats": "stats:read",
}


def _metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


def _permission_denied(message: str, reason: str, **metadata: str) -> GatewayError:
    return GatewayError(grpc.StatusCode.PERMISSION_DENIED, reason, message, metadata=metadata)


def _note_record(state: CallState | None, record: CallRecord) -> None:
    if state is None:
        return
    state.attempts = record.attempts
    state.fallback_used = record.fallback_used
    state.cache_hit = record.cache_hit or record.coalesced  # no upstream call of its own
    if record.served_by is not None:
        state.provider = record.served_by.provider
        state.upstream_model = record.served_by.upstream_model
    elif record.tried:
        state.provider, _, rest = record.tried[-1].partition("/")
        state.upstream_model = rest.rsplit(":", 1)[0]


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    def __init__(
        self,
        router: Router,
        max_call_duration: float,
        method_scopes: Mapping[str, str] | None = None,
        auth_enabled: bool = True,
        limiter: Limiter | None = None,
        provider_stats: ProviderStatsReader | None = None,
    ) -> None:
        self._router = router
        self._provider_stats = provider_stats
        self._limiter = limiter
        self._max_call_duration = max_call_duration
        self._scopes = {**DEFAULT_METHOD_SCOPES, **(method_scopes or {})}
        self._auth_enabled = auth_enabled

    @classmethod
    def from_config(
        cls,
        router: Router,
        config: config_pb2.GatewayConfig,
        limiter: Limiter | None = None,
        provider_stats: ProviderStatsReader | None = None,
    ) -> ProviderServicer:
        from service.config import seconds_or

        return cls(
            router,
            seconds_or(config.server, "max_call_duration", 300.0),
            dict(config.auth.authorization.method_scopes),
            auth_enabled=not config.auth.disabled,
            limiter=limiter,
            provider_stats=provider_stats,
        )

    # --- per call ----------------------------------------------------------------------

    def _call_context(
        self, context: grpc.aio.ServicerContext[object, object], identity: Identity
    ) -> CallContext:
        metadata = _metadata(context)
        remaining = context.time_remaining()
        if remaining is None:
            budget = self._max_call_duration
        else:
            # Finish a little before the caller's own timer fires, so that the caller
            # gets our DEADLINE_EXCEEDED with its details rather than a bare local one.
            margin = min(DEADLINE_MARGIN, max(0.05, remaining * 0.1))
            budget = min(remaining - margin, self._max_call_duration)
        state = call_state()
        return CallContext(
            request_id=state.request_id
            if state is not None
            else metadata.get("x-request-id") or uuid.uuid4().hex,
            deadline=asyncio.get_running_loop().time() + budget,
            metadata=metadata,
            identity=identity,
        )

    def _authorize(self, method: str, model: str | None) -> Identity:
        """The caller's identity, if it may call this method (and use this model)."""
        state = call_state()
        identity = state.identity if state is not None else None
        if identity is None:
            if self._auth_enabled:  # defence in depth: never serve an unverified caller
                raise _permission_denied("the caller is not authenticated", "NO_IDENTITY")
            identity = ANONYMOUS
            if state is not None:
                state.identity = identity
        scope = self._scopes.get(method)
        if scope and not identity.has_scope(scope):
            if state is not None:
                state.denied_reason = f"missing scope {scope}"
            raise _permission_denied(
                "the caller may not call this method", "METHOD_NOT_ALLOWED", scope=scope
            )
        if model is not None and not identity.may_use(model):
            if state is not None:
                state.denied_reason = f"model {printable(model)} not allowed"
            raise _permission_denied(
                f'the caller may not use model "{printable(model)}"',
                "MODEL_NOT_ALLOWED",
                model=printable(model),
            )
        return identity

    async def _admit(
        self, identity: Identity, request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest
    ) -> Reservation | None:
        """Rate limits and budgets, charged with an estimate before any upstream call."""
        if self._limiter is None or not self._limiter.enabled:
            return None
        return await self._limiter.admit(identity, estimate_tokens(request))

    async def _unary(
        self, context: grpc.aio.ServicerContext[object, object], call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await call()
        except GatewayError as error:
            await context.abort_with_status(to_rpc_status(error))
        except Exception:
            log.exception("unexpected error in a unary call")
            await context.abort_with_status(to_rpc_status(internal()))
        raise AssertionError("abort_with_status always raises")

    # --- RPCs --------------------------------------------------------------------------

    async def Chat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> chat_pb2.ChatResponse:
        state = call_state()

        async def run() -> chat_pb2.ChatResponse:
            _note_request(state, request.model, request.labels)
            _note_options(state, request)
            validate_chat(request)
            identity = self._authorize(f"/{_SERVICE}/Chat", request.model)
            reservation = await self._admit(identity, request)
            ctx = self._call_context(context, identity)
            record = CallRecord()
            response = None
            try:
                response = await self._router.chat(request, ctx, record)
            finally:
                _note_record(state, record)
                if reservation is not None:
                    await reservation.settle(response.usage if response is not None else None)
            response.id = f"chat-{ctx.request_id}"
            response.model = request.model
            if state is not None:
                state.usage = response.usage
            return response

        return await self._unary(context, run)

    async def StreamChat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        state = call_state()
        record = CallRecord()
        reservation: Reservation | None = None
        usage: route_pb2.Usage | None = None
        try:
            _note_request(state, request.model, request.labels)
            _note_options(state, request)
            validate_chat(request)
            identity = self._authorize(f"/{_SERVICE}/StreamChat", request.model)
            reservation = await self._admit(identity, request)
            ctx = self._call_context(context, identity)
            stream_id = f"chat-{ctx.request_id}"
            loop = asyncio.get_running_loop()
            async for chunk in self._router.stream_chat(request, ctx, record):
                chunk.id = stream_id
                if state is not None and state.first_chunk_at is None:
                    state.first_chunk_at = loop.time()
                    _note_record(state, record)
                if chunk.HasField("usage"):
                    usage = chunk.usage
                    if state is not None:
                        state.usage = chunk.usage
                yield chunk
        except GatewayError as error:
            await context.abort_with_status(to_rpc_status(error))
        except Exception:
            log.exception("unexpected error in StreamChat")
            await context.abort_with_status(to_rpc_status(internal()))
        finally:
            _note_record(state, record)
            if reservation is not None:
                await reservation.settle(usage)

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> embed_pb2.EmbedResponse:
        state = call_state()

        async def run() -> embed_pb2.EmbedResponse:
            _note_request(state, request.model, request.labels)
            validate_embed(request)
            identity = self._authorize(f"/{_SERVICE}/Embed", request.model)
            reservation = await self._admit(identity, request)
            record = CallRecord()
            response = None
            try:
                response = await self._router.embed(
                    request, self._call_context(context, identity), record
                )
            finally:
                _note_record(state, record)
                if reservation is not None:
                    await reservation.settle(response.usage if response is not None else None)
            response.model = request.model
            if state is not None:
                state.usage = response.usage
            return response

        return await self._unary(context, run)

    async def CountTokens(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> count_tokens_pb2.CountTokensResponse:
        state = call_state()

        async def run() -> count_tokens_pb2.CountTokensResponse:
            _note_request(state, request.model, request.labels)
            validate_chat(request)
            identity = self._authorize(f"/{_SERVICE}/CountTokens", request.model)
            # Counted against the caller's requests per minute; no tokens are charged,
            # since nothing is generated.
            reservation = None
            if self._limiter is not None and self._limiter.enabled:
                reservation = await self._limiter.admit(identity, 0)
            ctx = self._call_context(context, identity)
            record = CallRecord()
            try:
                return await self._router.count_tokens(request, ctx, record)
            finally:
                _note_record(state, record)
                if reservation is not None:
                    await reservation.settle(None)

        return await self._unary(context, run)

    async def ListModels(
        self,
        request: models_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> models_pb2.ListModelsResponse:
        async def run() -> models_pb2.ListModelsResponse:
            identity = self._authorize(f"/{_SERVICE}/ListModels", None)
            registry = self._router.registry
            models = []
            for d in registry.deployments():
                members = registry.members(d)
                providers = {m.deployment.provider for m in members}
                if request.provider and request.provider not in providers:
                    continue
                if not identity.may_use(d.alias):
                    continue
                why_not = [self._router.availability.why_not(m.deployment) for m in members]
                reasons = [] if None in why_not else list(dict.fromkeys(filter(None, why_not)))
                models.append(
                    models_pb2.ModelInfo(
                        unavailable=bool(reasons),
                        unavailable_reasons=reasons,
                        alias=d.alias,
                        provider=d.provider,
                        provider_type=d.provider_type,
                        upstream_model=d.upstream_model,
                        capabilities=d.capabilities.to_proto(),
                        context_window=d.context_window,
                        deployments=[
                            models_pb2.ModelDeployment(
                                provider=m.deployment.provider,
                                provider_type=m.deployment.provider_type,
                                upstream_model=m.deployment.upstream_model,
                                weight=m.weight,
                            )
                            for m in members
                            if len(members) > 1  # listed for load-balanced aliases only
                        ],
                    )
                )
            models.extend(self._left_out(request.provider, identity))
            models.extend(self._discovered(request.provider, identity))
            models.sort(key=lambda m: m.alias)
            return models_pb2.ListModelsResponse(models=models)

        return await self._unary(context, run)

    def _left_out(self, only: str, identity: Identity) -> list[models_pb2.ModelInfo]:
        """Aliases served only by providers whose API key is missing: listed, and
        marked unavailable."""
        found = []
        for alias, deployments in sorted(self._router.registry.left_out.items()):
            if only and only not in {d.provider for d in deployments}:
                continue
            if not identity.may_use(alias):
                continue
            first = deployments[0]
            why_not = [self._router.availability.why_not(d) for d in deployments]
            found.append(
                models_pb2.ModelInfo(
                    alias=alias,
                    provider=first.provider,
                    provider_type=first.provider_type,
                    upstream_model=first.upstream_model,
                    capabilities=first.capabilities.to_proto(),
                    context_window=first.context_window,
                    deployments=[
                        models_pb2.ModelDeployment(
                            provider=d.provider,
                            provider_type=d.provider_type,
                            upstream_model=d.upstream_model,
                            weight=1,
                        )
                        for d in deployments
                        if len(deployments) > 1
                    ],
                    unavailable=True,
                    unavailable_reasons=list(dict.fromkeys(filter(None, why_not))),
                )
            )
        return found

    def _discovered(self, only: str, identity: Identity) -> list[models_pb2.ModelInfo]:
        """Models the providers' discovery found, as "provider/model", when callers may
        address them so (allow_direct_model_addressing)."""
        registry = self._router.registry
        discovery = self._router.discovery
        if not registry.allows_direct_addressing:
            return []
        found = []
        for name in sorted(discovery.state):
            if only and name != only:
                continue
            for model in discovery.models(name):
                alias = f"{name}/{model}"
                if alias in registry.models or not identity.may_use(alias):
                    continue
                try:
                    d = registry.resolve(alias)
                except GatewayError:  # a name outside the provider kind's rule
                    continue
                why_not = self._router.availability.why_not(d)
                found.append(
                    models_pb2.ModelInfo(
                        alias=alias,
                        provider=d.provider,
                        provider_type=d.provider_type,
                        upstream_model=d.upstream_model,
                        capabilities=d.capabilities.to_proto(),
                        discovered=True,
                        unavailable=why_not is not None,
                        unavailable_reasons=[why_not] if why_not else [],
                    )
                )
        return found

    async def GetProviderStats(
        self,
        request: models_pb2.GetProviderStatsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> models_pb2.GetProviderStatsResponse:
        async def run() -> models_pb2.GetProviderStatsResponse:
            self._authorize(f"/{_SERVICE}/GetProviderStats", None)
            if self._provider_stats is not None:
                response = await self._provider_stats(request.provider)
            else:
                quotas = self._router.quotas
                headroom = {
                    d.key: await quotas.headroom(d)
                    for d in quotas.watched()
                    if not request.provider or d.provider == request.provider
                }
                response = models_pb2.GetProviderStatsResponse(
                    providers=self._router.stats.snapshot(
                        request.provider, self._router.resilience.breakers, headroom
                    )
                )
            for stats in response.providers:
                found = self._router.discovery.state.get(stats.provider)
                if found is not None:
                    stats.discovered_models = len(found.models)
                    stats.discovery_failures = found.failures
            return response

        return await self._unary(context, run)


def _note_options(state: CallState | None, request: chat_pb2.ChatRequest) -> None:
    """The audit's provider_options: their keys, never their values."""
    if state is not None and request.provider_options.fields:
        state.provider_option_keys = sorted(request.provider_options.fields)


def _note_request(state: CallState | None, model: str, labels: Mapping[str, str]) -> None:
    if state is not None:
        state.model = model
        state.labels = dict(labels)
