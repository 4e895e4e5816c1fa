"""ChatResponse.provider_metadata and the final chunk's: facts a provider reported that
the contract does not model, kept under documented snake_case keys. Pure.

Keys (docs/providers.md, "Provider metadata"):
- `system_fingerprint`, `service_tier` — OpenAI, Azure, compatible servers that send them
- `prompt_filter_results`, `content_filter_results` — Azure content filtering
- `stop_sequence` — Anthropic: the stop sequence that ended the answer
- `safety_ratings`, `citation_metadata`, `grounding_metadata` — Gemini, first candidate
- `prompt_feedback` — Gemini, when the prompt was blocked or rated
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

# Upstream key → documented key, per provider family.
OPENAI_KEYS = {"system_fingerprint": "system_fingerprint", "service_tier": "service_tier"}
OPENAI_AZURE_KEYS = {"prompt_filter_results": "prompt_filter_results"}
OPENAI_CHOICE_KEYS = {"content_filter_results": "content_filter_results"}
GEMINI_CANDIDATE_KEYS = {
    "safetyRatings": "safety_ratings",
    "citationMetadata": "citation_metadata",
    "groundingMetadata": "grounding_metadata",
}
GEMINI_KEYS = {"promptFeedback": "prompt_feedback"}


def pick(source: Mapping[str, Any] | None, keys: Mapping[str, str]) -> dict[str, Any]:
    """The entries of `source` named in `keys`, renamed; null and empty values skipped."""
    if not isinstance(source, Mapping):
        return {}
    return {
        name: source[key] for key, name in keys.items() if source.get(key) not in (None, "", [], {})
    }


def to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct | None:
    """A Struct of the values, or None when there are none (the field stays unset)."""
    if not values:
        return None
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out
