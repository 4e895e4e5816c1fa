"""GenerationConfig.reasoning_effort in each provider's own terms. Pure data and small
functions; docs/providers.md ("Reasoning") shows the same mapping.

- OpenAI, Azure and OpenAI-compatible servers: `reasoning_effort` "low" | "medium" |
  "high".
- Anthropic: extended thinking `{"type": "enabled", "budget_tokens": N}` with N from
  ANTHROPIC_BUDGETS; `reasoning_budget_tokens`, when also set, wins.
- Gemini: `thinkingConfig.thinkingLevel` ("low" | "medium" | "high") for Gemini 3
  models, `thinkingConfig.thinkingBudget` from GEMINI_BUDGETS for earlier ones (the API
  refuses both at once); `reasoning_budget_tokens`, when also set, wins (always as
  thinkingBudget). Gemini 3 Pro models take only "low" and "high": MEDIUM is sent there
  as "high", their default level.
- Ollama: `think` "low" | "medium" | "high".
"""

from __future__ import annotations

from llmgateway.v1 import chat_pb2

LEVELS: dict[chat_pb2.ReasoningEffort.ValueType, str] = {
    chat_pb2.REASONING_EFFORT_LOW: "low",
    chat_pb2.REASONING_EFFORT_MEDIUM: "medium",
    chat_pb2.REASONING_EFFORT_HIGH: "high",
}
# Thinking tokens per effort. Anthropic's minimum budget is 1024.
ANTHROPIC_BUDGETS: dict[chat_pb2.ReasoningEffort.ValueType, int] = {
    chat_pb2.REASONING_EFFORT_LOW: 1024,
    chat_pb2.REASONING_EFFORT_MEDIUM: 4096,
    chat_pb2.REASONING_EFFORT_HIGH: 16384,
}
GEMINI_BUDGETS: dict[chat_pb2.ReasoningEffort.ValueType, int] = {
    chat_pb2.REASONING_EFFORT_LOW: 1024,
    chat_pb2.REASONING_EFFORT_MEDIUM: 8192,
    chat_pb2.REASONING_EFFORT_HIGH: 24576,
}


def level(config: chat_pb2.GenerationConfig) -> str | None:
    """ "low", "medium" or "high"; None when no effort is asked for."""
    return LEVELS.get(config.reasoning_effort)


def anthropic_budget(config: chat_pb2.GenerationConfig) -> int | None:
    """The thinking budget: reasoning_budget_tokens when set, else the effort's."""
    if config.HasField("reasoning_budget_tokens"):
        return config.reasoning_budget_tokens
    return ANTHROPIC_BUDGETS.get(config.reasoning_effort)


def gemini_thinking(config: chat_pb2.GenerationConfig, model: str) -> dict[str, object] | None:
    """`thinkingConfig` for a Gemini model, or None when no reasoning is asked for."""
    if config.HasField("reasoning_budget_tokens"):
        return {"thinkingBudget": config.reasoning_budget_tokens, "includeThoughts": True}
    effort = config.reasoning_effort
    if effort not in LEVELS:
        return None
    if model.startswith("gemini-3"):
        level = LEVELS[effort]
        if level == "medium" and "-pro" in model:
            level = "high"
        return {"thinkingLevel": level, "includeThoughts": True}
    return {"thinkingBudget": GEMINI_BUDGETS[effort], "includeThoughts": True}
