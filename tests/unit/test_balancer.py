"""The balancer's orderings: exact sequences where they are deterministic, measured
shares (from a seeded generator) where they are random."""

from __future__ import annotations

import random
from collections import Counter

from service.providers.base import Capabilities, Deployment
from service.routing.balancer import (
    Balancer,
    Member,
    Pool,
    Strategy,
    least_in_flight_order,
    smooth_round_robin,
    weighted_random_order,
)


def deployment(provider: str) -> Deployment:
    return Deployment(
        alias="pooled",
        provider=provider,
        provider_type="mock",
        upstream_model="m",
        capabilities=Capabilities(),
    )


def test_smooth_round_robin_spreads_the_heavier_deployment() -> None:
    # nginx's example: weights 5, 1, 1 give a a b a c a a, then the cycle repeats.
    state = [0, 0, 0]
    picks = []
    for _ in range(14):
        chosen, state = smooth_round_robin([5, 1, 1], state)
        picks.append("abc"[chosen])
    assert "".join(picks) == "aabacaa" * 2


def test_weighted_random_first_picks_follow_the_weights() -> None:
    uniform = random.Random(20261202).random
    firsts = Counter(weighted_random_order([3, 1], uniform)[0] for _ in range(20_000))
    assert 0.73 < firsts[0] / 20_000 < 0.77
    orders = {tuple(weighted_random_order([1, 1, 1], uniform)) for _ in range(200)}
    assert len(orders) == 6, "every order of three equal deployments occurs"
    assert all(sorted(order) == [0, 1, 2] for order in orders)


def test_least_in_flight_orders_by_load_per_weight() -> None:
    uniform = random.Random(1).random
    assert least_in_flight_order([1, 1, 1], [2, 0, 1], uniform) == [1, 2, 0]
    assert least_in_flight_order([4, 1], [2, 1], uniform) == [0, 1]  # 0.5 < 1.0
    ties = Counter(least_in_flight_order([1, 1], [0, 0], uniform)[0] for _ in range(1000))
    assert ties[0] > 400 and ties[1] > 400, "ties are broken at random"


def test_balancer_keeps_turns_per_alias_and_counts_calls_in_flight() -> None:
    a, b = deployment("a"), deployment("b")
    balancer = Balancer(random.Random(5).random)
    pool = Pool("pooled", Strategy.ROUND_ROBIN, (Member(a, 2), Member(b, 1)))
    firsts = [balancer.order(pool)[0].provider for _ in range(6)]
    assert firsts == ["a", "b", "a"] * 2
    assert balancer.order(pool) == [a, b], "the rest follow the chosen one as a failover"
    least = Pool("pooled", Strategy.LEAST_IN_FLIGHT, (Member(a), Member(b)))
    balancer.started(a)
    balancer.started(a)
    balancer.started(b)
    assert balancer.order(least) == [b, a]
    balancer.finished(a)
    balancer.finished(a)
    balancer.finished(a)  # one too many never goes below zero
    assert balancer.in_flight(a) == 0
    assert balancer.order(least) == [a, b]
