"""Room under a provider's rate limit: what a call needs, which configured limit applies
to a deployment, and the provider's own report. Pure: the time is a parameter.

A call needs 1 request and its estimated tokens: the input estimate plus the output it
may use (max_output_tokens, else the default allowance; service/limits/estimate.py).
The configured quota is two token buckets per deployment (service/limits/buckets.py,
kept in the limit store). The provider's report (service/providers/rate_limit_headers.py)
is a window per kind of limit: `remaining` until `until`; a call whose need is more
than what remains waits until then. Calls sent meanwhile are taken from it, so that the
view stays as tight as the provider's own count between two reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, embed_pb2

from service.limits.estimate import input_tokens, output_allowance
from service.providers.base import RateQuota
from service.providers.rate_limit_headers import (
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    REQUESTS,
    TOKENS,
    ReportedLimit,
)
from service.routing.rate_limit_checks import rate_limit_of


@dataclass(frozen=True)
class Need:
    """What one upstream request is charged: 1 request, and tokens in and out."""

    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def of(self, kind: str) -> int:
        """The amount of one kind of limit this request needs."""
        if kind == REQUESTS:
            return 1
        if kind == TOKENS:
            return self.tokens
        if kind == INPUT_TOKENS:
            return self.input_tokens
        if kind == OUTPUT_TOKENS:
            return self.output_tokens
        return 0


def need_of(request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest) -> Need:
    """A chat call's input estimate and output allowance; an embedding's input only."""
    if isinstance(request, chat_pb2.ChatRequest):
        return Need(input_tokens(request), output_allowance(request))
    return Need(input_tokens(request), 0)


def configured_quota(
    provider: config_pb2.ProviderConfig,
    model: config_pb2.ModelConfig,
    target: config_pb2.DeploymentTarget | None = None,
) -> RateQuota | None:
    """The rate_limit that applies to one deployment (rate_limit_checks.rate_limit_of:
    the deployment's own, else the model's, else the provider's, as a whole)."""
    limit = rate_limit_of(provider, model, target)
    return None if limit is None else RateQuota(*limit)


@dataclass(frozen=True)
class Window:
    """One reported limit: `remaining` holds until `until` (the caller's clock)."""

    remaining: float
    until: float


ReportedView = Mapping[str, Window]


def with_report(
    view: ReportedView, limits: Iterable[ReportedLimit], now: float
) -> dict[str, Window]:
    """The view after a response reported `limits`: each kind reported replaces what
    was known of it; the others stay while they hold."""
    updated = {kind: window for kind, window in view.items() if window.until > now}
    for limit in limits:
        if limit.reset_after > 0:  # a reset already past reports an old window
            updated[limit.kind] = Window(float(limit.remaining), now + limit.reset_after)
        else:
            updated.pop(limit.kind, None)
    return updated


def reported_wait(view: ReportedView, need: Need, now: float) -> float:
    """Seconds until the report lets this request through; 0 when it fits now."""
    wait = 0.0
    for kind, window in view.items():
        if window.until > now and window.remaining < need.of(kind):
            wait = max(wait, window.until - now)
    return wait


def taken(view: ReportedView, need: Need, now: float) -> dict[str, Window]:
    """The view after a request was sent: its need is taken from every kind that holds."""
    return {
        kind: Window(window.remaining - need.of(kind), window.until)
        for kind, window in view.items()
        if window.until > now
    }


@dataclass(frozen=True)
class Reported:
    """A reported limit as of now: what is left, and the seconds until its reset."""

    remaining: float
    reset_in: float


@dataclass(frozen=True)
class Headroom:
    """A deployment's room under its provider's rate limit, as this replica sees it.

    `requests_remaining` / `tokens_remaining` are the configured quota's (None without
    one); `reported` is the provider's last report while it holds; `available_in` is
    0 when a call may be sent now, else the seconds until one may."""

    quota: RateQuota | None
    requests_remaining: float | None
    tokens_remaining: float | None
    reported: Mapping[str, Reported]
    available_in: float

    @property
    def available(self) -> bool:
        return self.available_in <= 0
