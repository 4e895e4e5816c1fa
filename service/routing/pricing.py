"""Cost of a call from its usage and the model's prices. Pure."""

from __future__ import annotations

from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import route_pb2

from service.providers.base import Pricing


def pricing_from(prices: config_pb2.PricingConfig) -> Pricing:
    return Pricing(
        input=prices.input_per_million,
        cached_input=(
            prices.cached_input_per_million
            if prices.HasField("cached_input_per_million")
            else prices.input_per_million
        ),
        cache_write_input=(
            prices.cache_write_input_per_million
            if prices.HasField("cache_write_input_per_million")
            else prices.input_per_million
        ),
        output=prices.output_per_million,
    )


def cost_usd(usage: route_pb2.Usage, pricing: Pricing) -> float:
    """Input counts include cached and cache-write tokens (normalized usage), so the
    uncached remainder is priced at the input rate and the rest at their own."""
    uncached = max(
        0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_input_tokens
    )
    total = (
        uncached * pricing.input
        + usage.cached_input_tokens * pricing.cached_input
        + usage.cache_write_input_tokens * pricing.cache_write_input
        + usage.output_tokens * pricing.output
    )
    return round(total / 1_000_000, 10)


def apply_cost(usage: route_pb2.Usage, pricing: Pricing | None) -> None:
    if pricing is not None:
        usage.cost_usd = cost_usd(usage, pricing)
