"""Which upstream model names each provider kind accepts, and how a name is put into a
URL path. Pure.

An upstream model name comes from the configuration (`upstream_model`, or the alias
when that is not set) or, with `allow_direct_model_addressing`, from a caller
(`provider/model`). Gemini and classic Azure OpenAI place it in the request's URL path;
the others place it in the JSON body. Either way it must never change where the request
goes: every name is checked against its provider kind's rule before any request is
built (at config load, and when a caller names a model directly), and every path
segment is percent-encoded when the URL is built.

Every rule: segments of letters, digits and a few marks, each starting with a letter or
a digit (so never empty, `.` or `..`); no `%`, `?`, `#`, white space or control
characters; a bounded length. Only kinds whose model names have namespaces
(`org/model` on OpenAI-compatible servers, `namespace/model:tag` on Ollama, Gemini's
`models/` and `tunedModels/` prefixes) allow `/` between segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class NameRule:
    """The model names one provider kind accepts."""

    segment_marks: str  # characters besides letters and digits allowed in a segment
    max_length: int
    namespaces: bool = False  # may a name be segments separated by "/"
    prefixes: tuple[str, ...] = ()  # optional fixed first segments ("models/")

    def allowed(self) -> str:
        """What the rule allows, in words for an error message."""
        marks = " ".join(self.segment_marks)
        words = f"letters, digits and {marks}, starting with a letter or digit"
        if self.namespaces:
            words += "; parts separated by single /"
        elif self.prefixes:
            words += f"; optionally after {' or '.join(self.prefixes)}"
        return f"{words}; at most {self.max_length} characters"

    def problem(self, name: str) -> str | None:
        """None when `name` is acceptable; otherwise what is wrong with it."""
        if not name:
            return "must not be empty"
        if len(name) > self.max_length:
            return f"is longer than {self.max_length} characters"
        rest = name
        for prefix in self.prefixes:
            if rest.startswith(prefix):
                rest = rest[len(prefix) :]
                break
        segments = rest.split("/") if self.namespaces else [rest]
        segment = re.compile(rf"[A-Za-z0-9][A-Za-z0-9{re.escape(self.segment_marks)}]*")
        if all(segment.fullmatch(part) for part in segments):
            return None
        return f"is not a valid model name here (allowed: {self.allowed()})"


# Body-placed names get the provider's own alphabet; path-placed ones the narrowest.
RULES: dict[str, NameRule] = {
    # gpt-4o-2024-08-06, ft:gpt-4o-mini-2024-07-18:org::abc123
    "openai": NameRule("._:-", 128),
    # Azure deployment names: letters, digits, - _ . and at most 64 characters.
    "azure_openai": NameRule("._-", 64),
    # claude-sonnet-4-5, claude-3-5-sonnet-20241022
    "anthropic": NameRule("._:-", 128),
    # gemini-2.5-flash, models/gemini-2.5-flash, tunedModels/my-model-1
    "gemini": NameRule("._-", 128, prefixes=("models/", "tunedModels/")),
    # gemini-2.5-flash, text-embedding-005 (Google's publisher models on Vertex AI)
    "vertex_ai": NameRule("._-", 128, prefixes=("models/",)),
    # llama3.2, llama3.2:3b, library/llama3:8b, hf.co/org/repo:Q4_K_M
    "ollama": NameRule("._:-", 256, namespaces=True),
    # Qwen/Qwen2.5-7B-Instruct, model.gguf, lmstudio-community/model@q4_k_m
    "openai_compatible": NameRule("._:@-", 256, namespaces=True),
}
# The mock, custom provider classes and any kind not listed above.
GENERIC = NameRule("._:@-", 256, namespaces=True)


def rule_for(kind: str) -> NameRule:
    """The rule of a provider kind (ProviderConfig's `kind` member, or Provider.kind)."""
    return RULES.get(kind, GENERIC)


def path_segment(value: str) -> str:
    """One URL path segment: every character outside RFC 3986's unreserved set is
    percent-encoded ("/", "?", "#" and "%" included). Raises ValueError for "", "."
    and "..", which no encoding keeps from being read as a step in the path."""
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} cannot be a path segment")
    return quote(value, safe="")


def path(*segments: str) -> str:
    """Segments joined by "/", each encoded by path_segment."""
    return "/".join(path_segment(segment) for segment in segments)
