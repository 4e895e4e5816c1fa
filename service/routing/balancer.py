"""Load balancing: the order in which one call tries the deployments of an alias that
has several. The first is the one that serves it; the others are its failover, before
the alias's fallbacks.

- weighted random: each deployment is first with a probability proportional to its
  weight, and so on down the order (Efraimidis-Spirakis keys);
- round robin: smooth weighted round robin (as nginx does), spreading the turns of a
  heavier deployment between the others; the rest follow in configured order;
- least in flight: fewest calls in flight per unit of weight first, ties at random;
- lowest latency: the lowest decaying average of recent attempt latency first, with a
  small share of exploration (latency.py);
- lowest cost: the cheapest by its prices first, equal prices in weighted random order,
  deployments without prices last.

The last two order the deployments that can take a call now (the planner's `can_take`:
circuit, quota cool-down, key) before those that cannot.

The ordering functions are pure; `Balancer` keeps the round-robin positions, the
calls in flight and the latency averages per deployment.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2

from service.providers.base import Deployment, Pricing
from service.routing.latency import LatencyAverages, lowest_latency_order


class Strategy(enum.Enum):
    WEIGHTED_RANDOM = "weighted_random"
    ROUND_ROBIN = "round_robin"
    LEAST_IN_FLIGHT = "least_in_flight"
    LOWEST_LATENCY = "lowest_latency"
    LOWEST_COST = "lowest_cost"

    @classmethod
    def from_config(cls, value: config_pb2.BalanceStrategy.ValueType) -> Strategy:
        if value == config_pb2.BALANCE_STRATEGY_ROUND_ROBIN:
            return cls.ROUND_ROBIN
        if value == config_pb2.BALANCE_STRATEGY_LEAST_IN_FLIGHT:
            return cls.LEAST_IN_FLIGHT
        if value == config_pb2.BALANCE_STRATEGY_LOWEST_LATENCY:
            return cls.LOWEST_LATENCY
        if value == config_pb2.BALANCE_STRATEGY_LOWEST_COST:
            return cls.LOWEST_COST
        return cls.WEIGHTED_RANDOM


@dataclass(frozen=True)
class Member:
    deployment: Deployment
    weight: int = 1


@dataclass(frozen=True)
class Pool:
    """The deployments of one load-balanced alias."""

    alias: str
    strategy: Strategy
    members: tuple[Member, ...]


def weighted_random_order(weights: Sequence[int], uniform: Callable[[], float]) -> list[int]:
    """Indices in a random order where index i comes first with probability
    weights[i] / sum(weights): sorted by the key u ** (1 / weight), highest first."""
    keys = [(uniform() ** (1.0 / weight), index) for index, weight in enumerate(weights)]
    return [index for _, index in sorted(keys, reverse=True)]


def smooth_round_robin(weights: Sequence[int], current: Sequence[int]) -> tuple[int, list[int]]:
    """One turn of smooth weighted round robin: the chosen index and the new state."""
    total = sum(weights)
    state = [value + weight for value, weight in zip(current, weights, strict=True)]
    chosen = max(range(len(state)), key=lambda index: (state[index], -index))
    state[chosen] -= total
    return chosen, state


def least_in_flight_order(
    weights: Sequence[int], in_flight: Sequence[int], uniform: Callable[[], float]
) -> list[int]:
    """Indices by calls in flight per unit of weight, ties in random order."""
    return sorted(
        range(len(weights)), key=lambda index: (in_flight[index] / weights[index], uniform())
    )


def price_of(pricing: Pricing | None) -> float | None:
    """What the lowest-cost strategy compares: input plus output price per million
    tokens (None without prices)."""
    return None if pricing is None else pricing.input + pricing.output


def lowest_cost_order(
    prices: Sequence[float | None], weights: Sequence[int], uniform: Callable[[], float]
) -> list[int]:
    """Indices cheapest first; equal prices in weighted random order; unpriced last."""
    shuffled = weighted_random_order(weights, uniform)
    rank = {index: position for position, index in enumerate(shuffled)}
    return sorted(
        range(len(prices)),
        key=lambda index: (prices[index] is None, prices[index] or 0.0, rank[index]),
    )


def available_first(indices: list[int], can_take: Sequence[bool]) -> list[int]:
    """The same order, those that can take a call now before those that cannot."""
    return [i for i in indices if can_take[i]] + [i for i in indices if not can_take[i]]


class Balancer:
    def __init__(self, uniform: Callable[[], float] = random.random) -> None:
        self._uniform = uniform
        self._turns: dict[str, list[int]] = {}
        self._in_flight: dict[str, int] = {}
        self.latency = LatencyAverages()

    def order(
        self,
        pool: Pool,
        advance: bool = True,
        can_take: Callable[[Deployment], bool] | None = None,
    ) -> list[Deployment]:
        """The order for one call. `advance=False` leaves the round-robin turn where it
        is (a fallback pool most calls never reach) and orders by weight at random.
        `can_take` says whether a deployment can take a call now."""
        weights = [member.weight for member in pool.members]
        if pool.strategy in (Strategy.LOWEST_LATENCY, Strategy.LOWEST_COST):
            able = [can_take is None or can_take(m.deployment) for m in pool.members]
            if pool.strategy is Strategy.LOWEST_COST:
                prices = [price_of(member.deployment.pricing) for member in pool.members]
                indices = lowest_cost_order(prices, weights, self._uniform)
            else:
                averages = [self.latency.average(m.deployment.key) for m in pool.members]
                # Exploration only among those that can take the call.
                ready = [i for i in range(len(able)) if able[i]]
                ordered = lowest_latency_order([averages[i] for i in ready], self._uniform)
                indices = [ready[i] for i in ordered]
                indices += [i for i in range(len(able)) if not able[i]]
            indices = available_first(indices, able)
        elif pool.strategy is Strategy.ROUND_ROBIN and advance:
            first, self._turns[pool.alias] = smooth_round_robin(
                weights, self._turns.get(pool.alias) or [0] * len(weights)
            )
            indices = [first, *(index for index in range(len(weights)) if index != first)]
        elif pool.strategy is Strategy.LEAST_IN_FLIGHT:
            loads = [self.in_flight(member.deployment) for member in pool.members]
            indices = least_in_flight_order(weights, loads, self._uniform)
        else:
            indices = weighted_random_order(weights, self._uniform)
        return [pool.members[index].deployment for index in indices]

    def observed(self, deployment: Deployment, seconds: float, ok: bool) -> None:
        """An attempt at `deployment` ended after `seconds` (a stream's: when its first
        chunk came); for the lowest-latency strategy."""
        self.latency.observe(deployment.key, seconds, ok)

    def in_flight(self, deployment: Deployment) -> int:
        return self._in_flight.get(deployment.key, 0)

    def started(self, deployment: Deployment) -> None:
        self._in_flight[deployment.key] = self._in_flight.get(deployment.key, 0) + 1

    def finished(self, deployment: Deployment) -> None:
        left = self._in_flight.get(deployment.key, 0) - 1
        if left > 0:
            self._in_flight[deployment.key] = left
        else:
            self._in_flight.pop(deployment.key, None)
