"""What the terminal client prints: pure functions from responses and errors to text."""

from __future__ import annotations

from llmgateway.v1 import chat_pb2, models_pb2, route_pb2

from llmgateway_client.details import ErrorDetails

DIM = "\x1b[2m"
RESET = "\x1b[0m"


def dimmed(text: str, color: bool) -> str:
    return f"{DIM}{text}{RESET}" if color and text else text


def summary_line(
    route: route_pb2.RouteInfo | None,
    usage: route_pb2.Usage | None,
    finish_reason: chat_pb2.FinishReason.ValueType,
    first_chunk_seconds: float | None,
    total_seconds: float,
) -> str:
    """One line after the reply: route, usage, cost and time to the first chunk."""
    fields: list[str] = []
    if route is not None and route.provider:
        where = (
            f"{route.provider}/{route.upstream_model}" if route.upstream_model else route.provider
        )
        fields.append(where)
        fields.append(f"{route.attempts} attempt" + ("" if route.attempts == 1 else "s"))
        if route.fallback_used:
            fields.append("fallback")
        if route.cache_hit:
            fields.append("cache hit")
    if usage is not None:
        tokens = f"{usage.input_tokens} in + {usage.output_tokens} out tokens"
        if usage.reasoning_tokens:
            tokens += f" ({usage.reasoning_tokens} reasoning)"
        fields.append(tokens + (" (estimated)" if usage.estimated else ""))
        if usage.HasField("cost_usd"):
            fields.append(f"${usage.cost_usd:.6f}")
    if finish_reason:
        name = chat_pb2.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_")
        fields.append(name.lower())
    if first_chunk_seconds is not None:
        fields.append(f"first chunk {first_chunk_seconds * 1000:.0f} ms")
    fields.append(f"total {total_seconds * 1000:.0f} ms")
    return "[" + " · ".join(fields) + "]"


def error_lines(details: ErrorDetails) -> list[str]:
    """The status, the reason and what to do about it, one fact per line."""
    lines = [f"error: {details.code.name}: {details.message}"]
    if details.reason:
        lines.append(f"reason: {details.reason}")
    for field_path, description in details.field_violations.items():
        lines.append(f"field {field_path}: {description}")
    for subject, description in details.quota_violations.items():
        lines.append(f"quota {subject}: {description}")
    if details.retry_after is not None:
        lines.append(f"retry after {details.retry_after:.1f} s")
    return lines


def capability_names(model: models_pb2.ModelInfo) -> str:
    capabilities = model.capabilities
    names = [
        name
        for name, present in (
            ("streaming", capabilities.streaming),
            ("tools", capabilities.tools),
            ("vision", capabilities.vision),
            ("json", capabilities.json_output),
            ("embeddings", capabilities.embeddings),
        )
        if present
    ]
    return ",".join(names) or "-"


def availability(model: models_pb2.ModelInfo) -> str:
    if not model.unavailable:
        return "yes"
    return "no: " + ",".join(model.unavailable_reasons) if model.unavailable_reasons else "no"


def model_rows(models: list[models_pb2.ModelInfo]) -> list[str]:
    """ListModels as an aligned table: alias, where it goes, capabilities, context, and
    whether it can take a call now (and if not, why)."""
    rows = [("ALIAS", "PROVIDER", "UPSTREAM MODEL", "CAPABILITIES", "CONTEXT", "AVAILABLE")]
    for model in models:
        providers = sorted({d.provider for d in model.deployments}) or [model.provider]
        rows.append(
            (
                model.alias,
                ",".join(providers),
                model.upstream_model or "-",
                capability_names(model),
                str(model.context_window) if model.context_window else "-",
                availability(model),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
