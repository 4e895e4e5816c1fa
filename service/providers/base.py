"""The interface every provider adapter implements, and what a call carries to it.

An adapter is two halves (DESIGN §1): pure transforms (proto request → upstream
request; upstream response or stream events → proto messages; upstream error →
GatewayError), tested without sockets, and a transport that moves bytes. The router
only sees this interface.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from llmgateway.v1 import chat_pb2, embed_pb2, models_pb2

from service.auth.identity import ANONYMOUS, Identity


@dataclass(frozen=True)
class Capabilities:
    """What a model alias can do (reported by ListModels, enforced before calls)."""

    streaming: bool = True
    tools: bool = True
    vision: bool = False
    json_output: bool = True
    embeddings: bool = False
    documents: bool = False  # document (PDF) parts

    def to_proto(self) -> models_pb2.ModelCapabilities:
        return models_pb2.ModelCapabilities(
            streaming=self.streaming,
            tools=self.tools,
            vision=self.vision,
            json_output=self.json_output,
            embeddings=self.embeddings,
            documents=self.documents,
        )


EMBEDDINGS_ONLY = Capabilities(
    streaming=False, tools=False, vision=False, json_output=False, embeddings=True
)


@dataclass(frozen=True)
class Pricing:
    """US dollars per million tokens."""

    input: float
    cached_input: float
    cache_write_input: float
    output: float


@dataclass(frozen=True)
class RateQuota:
    """The provider's rate limit for one deployment, as configured; 0 means none."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class Timeouts:
    """Limits of one attempt, in seconds; each is further bounded by the deadline."""

    connect: float = 5.0
    read: float = 60.0  # longest gap between two reads of the response
    total: float = 600.0
    first_token: float | None = None  # streams: start of the attempt → first chunk
    idle: float | None = None  # streams: longest gap between two chunks


@dataclass(frozen=True)
class EmbedBatching:
    """How Embed calls to one deployment are gathered into one upstream request."""

    window: float  # seconds the first call of a batch waits for others
    max_inputs: int = 0  # most inputs in one request; 0: the provider's own limit


@dataclass(frozen=True)
class Deployment:
    """One concrete choice for a model alias: a provider and the model sent upstream."""

    alias: str
    provider: str
    provider_type: str
    upstream_model: str
    capabilities: Capabilities
    context_window: int = 0  # tokens, as ListModels reports it (configured or the kind's)
    # The configured context_window: prompts estimated longer are refused before they are
    # sent (service/routing/context.py); 0: no check.
    context_limit: int = 0
    pricing: Pricing | None = None
    timeouts: Timeouts = Timeouts()
    fallbacks: tuple[str, ...] = ()  # aliases tried when this one fails over
    context_fallbacks: tuple[str, ...] = ()  # aliases tried when the context is too long
    cache_ttl: float | None = None  # seconds answers are cached; None: not cached
    # The provider's rate limit for this deployment (service/routing/quotas.py); None: none.
    rate_limit: RateQuota | None = None
    batch: EmbedBatching | None = None  # Embed calls batched (routing/batching.py); None: not
    # Leave out request settings the kind cannot take instead of refusing the call
    # (service/providers/unsupported.py); they are listed in RouteInfo.dropped_settings.
    drop_unsupported: bool = False
    allow_provider_options: bool = False  # ChatRequest.provider_options are merged upstream

    @property
    def key(self) -> str:
        """Identifies the deployment for circuit breaking: provider and upstream model."""
        return f"{self.provider}/{self.upstream_model}"


@dataclass(frozen=True)
class CallContext:
    """Per-attempt facts a provider needs; never secrets of the caller."""

    request_id: str
    deadline: float  # absolute, on the event loop's clock
    attempt: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)  # lower-case keys
    identity: Identity = ANONYMOUS  # who is calling; fallbacks are limited to what it may use
    # Called by the transport with each upstream response's headers (lower-case names),
    # as soon as they arrive, so that the provider's rate-limit report is read.
    observe_headers: Callable[[Mapping[str, str]], None] | None = None


class Provider(abc.ABC):
    """A configured upstream. One instance per configured provider, long-lived."""

    kind: str = ""
    default_capabilities: Capabilities = Capabilities()
    default_context_window: int = 0  # tokens; 0 = unknown (aliases may say)
    max_embed_inputs: int = 2048  # most inputs one upstream Embed request may carry

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> chat_pb2.ChatResponse:
        """A whole completion; `id`, `model` and `route` are filled in by the caller."""

    @abc.abstractmethod
    def stream_chat(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.StreamChatResponse]:
        """Chunks in order: deltas, finish_reason on the last content chunk, usage on
        the last chunk. Raises GatewayError when the upstream stream fails or is cut."""

    @abc.abstractmethod
    async def embed(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment, ctx: CallContext
    ) -> embed_pb2.EmbedResponse:
        """Embeddings in input order; `model` and `route` are filled in by the caller."""

    async def list_models(self, deadline: float) -> list[str] | None:
        """The upstream's model names, for discovery; None when it offers no list.
        Raises GatewayError when the upstream fails."""
        return None

    # True when the provider has an endpoint that counts a chat request's input tokens.
    counts_tokens: bool = False

    async def count_tokens(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, ctx: CallContext
    ) -> tuple[int, str]:
        """The provider's own count of the request's input tokens, and the upstream
        request id. Only called when `counts_tokens` is True."""
        raise NotImplementedError(f"{self.kind} providers do not count tokens")

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most transports override
        """Releases connections. Called once at shutdown."""
