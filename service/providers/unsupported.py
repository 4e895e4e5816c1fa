"""Which request settings each provider kind takes, and as what: one table, pure data,
and the one function that finds the settings a request sets that its deployment's kind
cannot take.

The router refuses such a request before any upstream call (INVALID_ARGUMENT,
CAPABILITY_UNSUPPORTED, a field violation naming the setting), or, for an alias
configured with `drop_unsupported`, sends it without them and lists them in
`RouteInfo.dropped_settings` (`without`). docs/providers.md shows the same table
(`table_markdown`; a test keeps the two equal).

A cell is the provider's own field the setting is sent as, or None: refused. Kinds
missing from the table (custom providers) receive the whole request and decide.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message
from llmgateway.v1 import chat_pb2

REFUSED = None
CHAT_ONLY_NOTE = "Chat only"  # shown after a CHAT_ONLY setting's cells

# The request settings in the order docs/providers.md lists them, each with the test of
# whether a request sets it.
_Present = Callable[[chat_pb2.ChatRequest], bool]


def _has(name: str) -> _Present:
    return lambda request: request.generation_config.HasField(name)  # type: ignore[arg-type]


SETTINGS: dict[str, _Present] = {
    "generation_config.temperature": _has("temperature"),
    "generation_config.top_p": _has("top_p"),
    "generation_config.top_k": _has("top_k"),
    "generation_config.max_output_tokens": _has("max_output_tokens"),
    "generation_config.seed": _has("seed"),
    "generation_config.stop_sequences": lambda r: bool(r.generation_config.stop_sequences),
    "generation_config.presence_penalty": _has("presence_penalty"),
    "generation_config.frequency_penalty": _has("frequency_penalty"),
    "generation_config.response_format": lambda r: (
        r.generation_config.response_format.type
        not in (chat_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED, chat_pb2.RESPONSE_FORMAT_TYPE_TEXT)
    ),
    "generation_config.reasoning_budget_tokens": _has("reasoning_budget_tokens"),
    "generation_config.reasoning_effort": lambda r: (
        r.generation_config.reasoning_effort != chat_pb2.REASONING_EFFORT_UNSPECIFIED
    ),
    "generation_config.logprobs": lambda r: r.generation_config.logprobs,
    "generation_config.top_logprobs": _has("top_logprobs"),
    "generation_config.candidate_count": lambda r: (
        r.generation_config.HasField("candidate_count") and r.generation_config.candidate_count > 1
    ),
    "messages[].name": lambda r: any(m.name for m in r.messages),
    "tools": lambda r: bool(r.tools),
    "tool_choice": lambda r: r.tool_choice.WhichOneof("choice") is not None,
    "provider_options": lambda r: bool(r.provider_options.fields),
}

# Settings that StreamChat refuses for every kind (one candidate per stream).
CHAT_ONLY = frozenset({"generation_config.candidate_count"})

_OPENAI: dict[str, str | None] = {
    "generation_config.temperature": "`temperature`",
    "generation_config.top_p": "`top_p`",
    "generation_config.top_k": REFUSED,
    "generation_config.max_output_tokens": "`max_completion_tokens`",
    "generation_config.seed": "`seed`",
    "generation_config.stop_sequences": "`stop`",
    "generation_config.presence_penalty": "`presence_penalty`",
    "generation_config.frequency_penalty": "`frequency_penalty`",
    "generation_config.response_format": "`response_format`",
    "generation_config.reasoning_budget_tokens": REFUSED,
    "generation_config.reasoning_effort": "`reasoning_effort`",
    "generation_config.logprobs": "`logprobs`",
    "generation_config.top_logprobs": "`top_logprobs`",
    "generation_config.candidate_count": "`n`",
    "messages[].name": "`messages[].name`",
    "tools": "`tools`",
    "tool_choice": "`tool_choice`",
    "provider_options": "merged into the body",
}

TABLE: dict[str, dict[str, str | None]] = {
    "openai": _OPENAI,
    "azure_openai": dict(_OPENAI),
    "openai_compatible": {
        **_OPENAI,
        "generation_config.top_k": "`top_k`",
        "generation_config.max_output_tokens": "`max_tokens`",
    },
    "anthropic": {
        "generation_config.temperature": "`temperature` (0 to 1)",
        "generation_config.top_p": "`top_p`",
        "generation_config.top_k": "`top_k`",
        "generation_config.max_output_tokens": "`max_tokens`",
        "generation_config.seed": REFUSED,
        "generation_config.stop_sequences": "`stop_sequences`",
        "generation_config.presence_penalty": REFUSED,
        "generation_config.frequency_penalty": REFUSED,
        "generation_config.response_format": "`output_config.format`",
        "generation_config.reasoning_budget_tokens": "`thinking.budget_tokens`",
        "generation_config.reasoning_effort": "`thinking.budget_tokens` (mapped)",
        "generation_config.logprobs": REFUSED,
        "generation_config.top_logprobs": REFUSED,
        "generation_config.candidate_count": REFUSED,
        "messages[].name": REFUSED,
        "tools": "`tools`",
        "tool_choice": "`tool_choice`",
        "provider_options": "merged into the body",
    },
    "gemini": {
        "generation_config.temperature": "`generationConfig.temperature`",
        "generation_config.top_p": "`generationConfig.topP`",
        "generation_config.top_k": "`generationConfig.topK`",
        "generation_config.max_output_tokens": "`generationConfig.maxOutputTokens`",
        "generation_config.seed": "`generationConfig.seed`",
        "generation_config.stop_sequences": "`generationConfig.stopSequences`",
        "generation_config.presence_penalty": "`generationConfig.presencePenalty`",
        "generation_config.frequency_penalty": "`generationConfig.frequencyPenalty`",
        "generation_config.response_format": "`generationConfig.responseMimeType`",
        "generation_config.reasoning_budget_tokens": "`thinkingConfig.thinkingBudget`",
        "generation_config.reasoning_effort": "`thinkingConfig` (mapped)",
        "generation_config.logprobs": "`generationConfig.responseLogprobs`",
        "generation_config.top_logprobs": "`generationConfig.logprobs`",
        "generation_config.candidate_count": "`generationConfig.candidateCount`",
        "messages[].name": REFUSED,
        "tools": "`tools[].functionDeclarations`",
        "tool_choice": "`toolConfig.functionCallingConfig`",
        "provider_options": "merged into the body",
    },
    "ollama": {
        "generation_config.temperature": "`options.temperature`",
        "generation_config.top_p": "`options.top_p`",
        "generation_config.top_k": "`options.top_k`",
        "generation_config.max_output_tokens": "`options.num_predict`",
        "generation_config.seed": "`options.seed`",
        "generation_config.stop_sequences": "`options.stop`",
        "generation_config.presence_penalty": "`options.presence_penalty`",
        "generation_config.frequency_penalty": "`options.frequency_penalty`",
        "generation_config.response_format": "`format`",
        "generation_config.reasoning_budget_tokens": "`think: true` (no budget)",
        "generation_config.reasoning_effort": "`think` (low, medium, high)",
        "generation_config.logprobs": REFUSED,
        "generation_config.top_logprobs": REFUSED,
        "generation_config.candidate_count": REFUSED,
        "messages[].name": REFUSED,
        "tools": "`tools` (AUTO and NONE only)",
        "tool_choice": "no field: AUTO, NONE",
        "provider_options": "merged into the body",
    },
    "mock": {
        **{name: "accepted, not used" for name in SETTINGS},
        "generation_config.logprobs": REFUSED,
        "generation_config.top_logprobs": REFUSED,
        "generation_config.candidate_count": REFUSED,
        "tools": "scripted",
        "tool_choice": "scripted",
    },
}


def unsupported(request: chat_pb2.ChatRequest, kind: str, streaming: bool) -> list[str]:
    """The settings `request` sets that a deployment of `kind` cannot take, as field
    paths in table order; empty for kinds outside the table."""
    row = TABLE.get(kind)
    if row is None:
        return []
    return [
        name
        for name, present in SETTINGS.items()
        if (row.get(name) is REFUSED or (streaming and name in CHAT_ONLY)) and present(request)
    ]


def field_path(request: chat_pb2.ChatRequest, name: str) -> str:
    """The request field a refusal of setting `name` names: the setting itself, or for
    per-message settings the first message that sets it."""
    if name == "messages[].name":
        first = next(i for i, m in enumerate(request.messages) if m.name)
        return f"messages[{first}].name"
    return name


def without(request: chat_pb2.ChatRequest, names: list[str]) -> chat_pb2.ChatRequest:
    """A copy of `request` with the settings `names` cleared (the request as a
    `drop_unsupported` alias sends it)."""
    if not names:
        return request
    copy = chat_pb2.ChatRequest()
    copy.CopyFrom(request)
    for name in names:
        if name == "messages[].name":
            for message in copy.messages:
                message.ClearField("name")
            continue
        holder: Message = copy
        if name.startswith("generation_config."):
            holder = copy.generation_config
        holder.ClearField(name.rpartition(".")[2])
    return copy


def table_markdown() -> str:
    """The table as docs/providers.md shows it: a row per setting, a column per kind."""
    kinds = list(TABLE)
    lines = [
        "| setting | " + " | ".join(f"`{kind}`" for kind in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for name in SETTINGS:
        cells = []
        for kind in kinds:
            cell = TABLE[kind][name]
            cell = "refused" if cell is REFUSED else cell
            if name in CHAT_ONLY and TABLE[kind][name] is not REFUSED:
                cell = f"{cell} ({CHAT_ONLY_NOTE})"
            cells.append(cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
