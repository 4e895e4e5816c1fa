"""The audit record of one RPC, built from its CallState and its outcome (pure).

Only the fields listed in FIELDS are written, each taken from a known place: never a
token, an API key, authorization metadata, nor any prompt or completion text. Strings
that a caller chooses (the method of an unknown RPC, a model name, labels, the user
agent, the token's `jti`, provider_options keys) are bounded; of provider_options only
the keys are written.

The caller is named by `issuer` and `subject` together (a subject means something only
with its issuer), with the `kid` of the key that verified its token and the token's
`jti`. The sink numbers the records it is given (`seq`, see SEQUENCE_FIELD).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.callstate import CallState

FIELDS = (
    "time",
    "request_id",
    "peer",
    "user_agent",
    "method",
    "issuer",
    "subject",
    "tenant",
    "kid",
    "jti",
    "model",
    "provider",
    "upstream_model",
    "attempts",
    "fallback_used",
    "cache_hit",
    "status",
    "reason",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "labels",
    "provider_options",
)
# Added by the sink when a record is submitted: 1, 2, 3, ... in this process, in the
# order records are written; a gap is a record lost (and counted as dropped).
SEQUENCE_FIELD = "seq"
MAX_TEXT = 256  # characters kept of any one string field
MAX_LABELS = 64


def rfc3339_utc(epoch_seconds: float) -> str:
    """ "2026-11-29T01:43:26.123Z": RFC 3339, UTC, milliseconds."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: object) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000, 3)


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    kept = sorted(labels.items())[:MAX_LABELS]
    return {_text(k): _text(v) for k, v in kept}


def build_record(
    state: CallState,
    *,
    status: str,
    reason: str,
    ended: float,
    wall_started: float,
    streaming: bool,
    first_response_at: float | None = None,
) -> dict[str, Any]:
    """The record of a finished RPC.

    `status` is the gRPC code name ("OK", "PERMISSION_DENIED", ...); `reason` the
    ErrorInfo reason the call ended with, if any. `ended`, `state.started`,
    `state.first_chunk_at` and `first_response_at` are on the event loop's clock;
    `wall_started` is the wall-clock time (epoch seconds) the call started, which
    `time` shows. For streams, the time to the first chunk is taken from
    `state.first_chunk_at` (set by the servicer) or else from `first_response_at`
    (the first message the interceptor saw).
    """
    identity = state.identity
    usage = state.usage
    if status != "OK" and state.denied_reason:
        reason = state.denied_reason  # a refusal's precise cause, known to the audit only
    first = state.first_chunk_at if state.first_chunk_at is not None else first_response_at
    cost: float | None = None
    if usage is not None and usage.HasField("cost_usd") and math.isfinite(usage.cost_usd):
        cost = usage.cost_usd
    return {
        "time": rfc3339_utc(wall_started),
        "request_id": _text(state.request_id),
        "peer": _text(state.peer),
        "user_agent": _text(state.user_agent),
        "method": _text(state.method),
        "issuer": _text(identity.issuer) if identity is not None else "",
        "subject": _text(identity.subject) if identity is not None else "",
        "tenant": _text(identity.tenant) if identity is not None else "",
        "kid": _text(identity.key_id) if identity is not None else "",
        "jti": _text(identity.token_id) if identity is not None else "",
        "model": _text(state.model),
        "provider": _text(state.provider),
        "upstream_model": _text(state.upstream_model),
        "attempts": int(state.attempts),
        "fallback_used": bool(state.fallback_used),
        "cache_hit": bool(state.cache_hit),
        "status": status,
        "reason": _text(reason),
        "latency_ms": _ms(ended - state.started),
        "ttft_ms": _ms(first - state.started) if streaming and first is not None else None,
        "input_tokens": int(usage.input_tokens) if usage is not None else 0,
        "output_tokens": int(usage.output_tokens) if usage is not None else 0,
        "cost_usd": cost,
        "labels": _labels(state.labels),
        # The keys a caller merged into the upstream body, never their values.
        "provider_options": [_text(k) for k in state.provider_option_keys[:MAX_LABELS]],
    }
