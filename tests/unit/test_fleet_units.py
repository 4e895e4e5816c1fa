"""Pure parts of the fleet features: the latency averages and orders, the cost order,
the batch splitter and the per-deployment window."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from llmgateway.v1 import embed_pb2, route_pb2

from service.providers.base import Capabilities, Deployment, Pricing
from service.routing.balancer import (
    Balancer,
    Member,
    Pool,
    Strategy,
    available_first,
    lowest_cost_order,
    price_of,
)
from service.routing.batch_split import shares, split_response
from service.routing.fleet_stats import FleetStats, Outcome, percentile
from service.routing.latency import FAILURE_FLOOR, LatencyAverages, lowest_latency_order


def deployment(provider: str, pricing: Pricing | None = None) -> Deployment:
    return Deployment(
        alias="pooled",
        provider=provider,
        provider_type="mock",
        upstream_model="m",
        capabilities=Capabilities(),
        pricing=pricing,
    )


def test_ewma_follows_recent_samples_and_counts_failures_as_slow() -> None:
    averages = LatencyAverages(alpha=0.5)
    assert averages.average("a") is None
    averages.observe("a", 0.1)
    assert averages.average("a") == pytest.approx(0.1)
    averages.observe("a", 0.3)
    assert averages.average("a") == pytest.approx(0.2)
    averages.observe("a", 0.01, ok=False)  # a fast failure still counts as slow
    assert averages.average("a") == pytest.approx(0.5 * FAILURE_FLOOR + 0.5 * 0.2)


def test_lowest_latency_measures_each_first_then_prefers_the_fastest() -> None:
    uniform = random.Random(1).random
    assert lowest_latency_order([0.2, None], uniform, exploration=0.0)[0] == 1
    assert lowest_latency_order([0.2, 0.05, 0.1], uniform, exploration=0.0) == [1, 2, 0]


def test_lowest_latency_explores_a_small_share() -> None:
    uniform = random.Random(20261204).random
    firsts = Counter(lowest_latency_order([0.01, 0.5], uniform)[0] for _ in range(10_000))
    assert 300 <= firsts[1] <= 700, firsts  # 5 % of 10 000 is 500


def test_lowest_cost_orders_by_price_ties_by_weight_unpriced_last() -> None:
    uniform = random.Random(3).random
    assert lowest_cost_order([3.0, None, 1.0], [1, 1, 1], uniform) == [2, 0, 1]
    firsts = Counter(lowest_cost_order([1.0, 1.0, 5.0], [3, 1, 1], uniform)[0] for _ in range(4000))
    assert firsts[2] == 0
    assert 2700 <= firsts[0] <= 3300, firsts  # weights 3:1 → 3000 of 4000
    assert price_of(Pricing(input=1, cached_input=1, cache_write_input=1, output=2)) == 3
    assert price_of(None) is None


def test_new_strategies_put_deployments_that_cannot_take_a_call_last() -> None:
    cheap = deployment("cheap", Pricing(0.1, 0.1, 0.1, 0.2))
    dear = deployment("dear", Pricing(1, 1, 1, 2))
    pool = Pool("pooled", Strategy.LOWEST_COST, (Member(cheap), Member(dear)))
    balancer = Balancer(random.Random(5).random)
    assert balancer.order(pool) == [cheap, dear]
    assert balancer.order(pool, can_take=lambda d: d is not cheap) == [dear, cheap]
    fast = deployment("fast")
    slow = deployment("slow")
    latency = Pool("pooled", Strategy.LOWEST_LATENCY, (Member(slow), Member(fast)))
    balancer.observed(fast, 0.01, ok=True)
    balancer.observed(slow, 0.5, ok=True)
    picks = Counter(balancer.order(latency)[0].provider for _ in range(200))
    assert picks["fast"] >= 180
    assert {
        balancer.order(latency, can_take=lambda d: d is slow)[0].provider for _ in range(50)
    } == {"slow"}
    assert available_first([2, 0, 1], [False, True, True]) == [2, 1, 0]


def test_shares_are_proportional_and_add_up_exactly() -> None:
    assert shares(10, [1, 1, 1]) == [4, 3, 3]
    assert shares(7, [2, 0, 5]) == [2, 0, 5]
    assert shares(0, [3, 4]) == [0, 0]
    assert shares(5, [0, 0]) == [3, 2]
    rng = random.Random(9)
    for _ in range(500):
        weights = [rng.randint(0, 50) for _ in range(rng.randint(1, 10))]
        total = rng.randint(0, 10_000)
        parts = shares(total, weights)
        assert sum(parts) == total
        whole = sum(weights) or len(weights)
        for part, weight in zip(parts, weights or [1] * len(weights), strict=True):
            exact = total * (weight if sum(weights) else 1) / whole
            assert abs(part - exact) < 1


def test_split_gives_each_caller_its_own_vectors_in_order() -> None:
    vectors = [embed_pb2.Embedding(index=i, values=[float(i)]) for i in range(5)]
    response = embed_pb2.EmbedResponse(
        embeddings=list(reversed(vectors)),  # upstream order does not matter: the index does
        usage=route_pb2.Usage(input_tokens=9, total_tokens=9),
    )
    response.route.upstream_request_id = "req-1"
    first, second = split_response(response, [2, 3], [1, 2])
    assert [(e.index, list(e.values)) for e in first.embeddings] == [(0, [0.0]), (1, [1.0])]
    assert [(e.index, list(e.values)) for e in second.embeddings] == [
        (0, [2.0]),
        (1, [3.0]),
        (2, [4.0]),
    ]
    assert (first.usage.input_tokens, second.usage.input_tokens) == (3, 6)
    assert second.usage.total_tokens == 6
    assert first.route.upstream_request_id == "req-1"
    with pytest.raises(ValueError, match="4 embeddings for 5 inputs"):
        split_response(embed_pb2.EmbedResponse(embeddings=vectors[:4]), [2, 3], [1, 1])


def test_recent_window_forgets_old_attempts() -> None:
    now = [1000.0]
    fleet = FleetStats(lambda: now[0])
    d = deployment("p")
    fleet.attempt(d, Outcome.SUCCESS, 0.1)
    fleet.attempt(d, Outcome.FAILURE, 0.3)
    fleet.attempt(d, Outcome.CANCELLED, 9.0)  # says nothing about the deployment
    view = fleet.view(d.key)
    assert view is not None
    assert (view.calls, view.success_rate, view.latency_p50, view.latency_p95) == (2, 0.5, 0.1, 0.3)
    now[0] += 301
    fleet.attempt(d, Outcome.SUCCESS, 0.2)
    view = fleet.view(d.key)
    assert view is not None and (view.calls, view.latency_p95) == (1, 0.2)
    assert percentile([], 0.5) == 0.0
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3
