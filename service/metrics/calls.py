"""Per-call metrics, fed by the audit record of every finished RPC: the metrics count
exactly the outcomes the audit log holds.

Label values are bounded: methods outside the served ones become "other", models
outside the configured aliases become "other", codes are gRPC code names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

OTHER = "other"
# From a cached mock reply to a long generation.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip


class CallMetrics:
    def __init__(
        self, registry: CollectorRegistry, methods: Iterable[str], models: Iterable[str]
    ) -> None:
        self._methods = frozenset(methods)
        self._models = frozenset(models)
        self.rpcs = Counter(
            "llm_gateway_rpcs",
            "RPCs finished, by full method name and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "llm_gateway_rpc_duration_seconds",
            "Time from the start of an RPC to its end.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.first_chunk = Histogram(
            "llm_gateway_stream_first_chunk_seconds",
            "Time from the start of a streaming call to its first chunk, by model alias.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llm_gateway_tokens",
            "Tokens reported by the providers, by model alias and direction.",
            ["model", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "llm_gateway_cost_usd",
            "Cost of the calls in US dollars, from the pricing table, by model alias.",
            ["model"],
            registry=registry,
        )
        self.model_calls = Counter(
            "llm_gateway_model_calls",
            "Chat, StreamChat and Embed calls by model alias and gRPC status code: an alias"
            " whose calls all fail has every deployment and fallback failing.",
            ["model", "code"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "llm_gateway_fallbacks",
            "Calls served by a deployment other than the requested alias's own.",
            ["model"],
            registry=registry,
        )

    def observe(self, record: Mapping[str, Any], state: object = None) -> None:
        method = record["method"] if record["method"] in self._methods else OTHER
        self.rpcs.labels(method, record["status"]).inc()
        self.duration.labels(method).observe(record["latency_ms"] / 1000)
        if not record["model"]:
            return
        model = record["model"] if record["model"] in self._models else OTHER
        self.model_calls.labels(model, record["status"]).inc()
        if record["ttft_ms"] is not None:
            self.first_chunk.labels(model).observe(record["ttft_ms"] / 1000)
        for direction in ("input", "output"):
            if record[f"{direction}_tokens"]:
                self.tokens.labels(model, direction).inc(record[f"{direction}_tokens"])
        if record["cost_usd"]:
            self.cost.labels(model).inc(record["cost_usd"])
        if record["fallback_used"]:
            self.fallbacks.labels(model).inc()
