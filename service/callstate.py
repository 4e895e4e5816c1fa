"""What is known about the RPC being served, shared along its path.

The outermost interceptor creates one CallState per RPC and puts it in a context
variable; authentication fills in the identity, the servicer and router the model,
route and usage; the audit interceptor writes it out when the RPC ends. Everything runs
in the RPC's own task, so the context variable is the RPC's own.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmgateway.v1 import route_pb2

from service.auth.identity import Identity


@dataclass
class CallState:
    request_id: str
    method: str
    peer: str = ""
    user_agent: str = ""  # the caller's `user-agent` metadata, for the audit
    started: float = 0.0  # event-loop clock
    identity: Identity | None = None
    denied_reason: str = ""  # why authentication or authorization refused, for the audit only
    model: str = ""
    provider: str = ""
    upstream_model: str = ""
    attempts: int = 0
    fallback_used: bool = False
    cache_hit: bool = False
    first_chunk_at: float | None = None  # event-loop clock
    usage: route_pb2.Usage | None = None
    labels: dict[str, str] = field(default_factory=dict)
    provider_option_keys: list[str] = field(default_factory=list)  # keys only, sorted
    span: Any = None  # the call's OpenTelemetry server span, when traced

    def note_route(self, route: route_pb2.RouteInfo) -> None:
        self.provider = route.provider or self.provider
        self.upstream_model = route.upstream_model or self.upstream_model
        self.attempts = max(self.attempts, route.attempts)
        self.fallback_used = self.fallback_used or route.fallback_used
        self.cache_hit = self.cache_hit or route.cache_hit


def user_agent_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The `user-agent` metadata value ("" when absent or binary)."""
    for key, value in metadata or ():
        if key.lower() == "user-agent":
            return value if isinstance(value, str) else ""
    return ""


current_call: contextvars.ContextVar[CallState | None] = contextvars.ContextVar(
    "current_call", default=None
)


def call_state() -> CallState | None:
    return current_call.get()
