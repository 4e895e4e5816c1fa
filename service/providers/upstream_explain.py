"""What the provider said when it refused a caller's request, made safe to pass on.

Pure: no I/O. The provider's own explanation ("max_tokens: must be at most 8192",
"prompt is too long: 210000 tokens > 200000 maximum") is what a caller needs to fix a
request, so it travels in the status message and the ErrorInfo metadata — but only for
refusals that are the caller's to fix (400, 404, 413, 422, context too long, content
filter), never for failures of the gateway's own credentials or account, whose text may
describe the gateway's key. What does travel is masked with the log guard's credential
patterns, made printable and cut to a fixed length.
"""

from __future__ import annotations

import re

from service.errors import printable
from service.logs import redact

MAX_EXPLANATION_CHARS = 500
MAX_PARAM_CHARS = 128
# The statuses whose explanation is about the caller's request.
CALLER_STATUSES = frozenset({400, 404, 413, 422})
# Beyond the log guard's patterns: key fragments as providers echo them
# ("sk-abc1****wxyz", "AIza...***"), and long opaque tokens of any origin.
_FRAGMENTS = (
    (re.compile(r"[A-Za-z0-9_.-]*\*{3,}[A-Za-z0-9_.*-]*"), "[redacted]"),
    (re.compile(r"[A-Za-z0-9_+/=-]{40,}"), "[redacted]"),
)


def _masked(text: str) -> str:
    text = redact(text)
    for pattern, replacement in _FRAGMENTS:
        text = pattern.sub(replacement, text)
    return text


def explanation(text: str, limit: int = MAX_EXPLANATION_CHARS) -> str:
    """`text` with credentials masked, controls escaped, whitespace collapsed and at
    most `limit` characters ("..." ends a cut one)."""
    collapsed = " ".join(text.split())
    return printable(_masked(collapsed), limit) if collapsed else ""


def shown_for(
    http_status: int,
    *,
    auth_failed: bool,
    quota_exhausted: bool,
    failed_precondition: bool,
    context_length_exceeded: bool,
    content_filtered: bool,
) -> bool:
    """Whether the provider's explanation of this failure may reach the caller."""
    if auth_failed or quota_exhausted or failed_precondition or http_status in (401, 403):
        return False
    return context_length_exceeded or content_filtered or http_status in CALLER_STATUSES
