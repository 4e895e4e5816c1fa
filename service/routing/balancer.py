"""Load balancing: the order in which one call tries the deployments of an alias that
has several. The first is the one that serves it; the others are its failover, before
the alias's fallbacks.

- weighted random: each deployment is first with a probability proportional to its
  weight, and so on down the order (Efraimidis-Spirakis keys);
- round robin: smooth weighted round robin (as nginx does), spreading the turns of a
  heavier deployment between the others; the rest follow in configured order;
- least in flight: fewest calls in flight per unit of weight first, ties at random.

The ordering functions are pure; `Balancer` keeps the round-robin positions and the
calls in flight per deployment.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2

from service.providers.base import Deployment


class Strategy(enum.Enum):
    WEIGHTED_RANDOM = "weighted_random"
    ROUND_ROBIN = "round_robin"
    LEAST_IN_FLIGHT = "least_in_flight"

    @classmethod
    def from_config(cls, value: config_pb2.BalanceStrategy.ValueType) -> Strategy:
        if value == config_pb2.BALANCE_STRATEGY_ROUND_ROBIN:
            return cls.ROUND_ROBIN
        if value == config_pb2.BALANCE_STRATEGY_LEAST_IN_FLIGHT:
            return cls.LEAST_IN_FLIGHT
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


class Balancer:
    def __init__(self, uniform: Callable[[], float] = random.random) -> None:
        self._uniform = uniform
        self._turns: dict[str, list[int]] = {}
        self._in_flight: dict[str, int] = {}

    def order(self, pool: Pool, advance: bool = True) -> list[Deployment]:
        """The order for one call. `advance=False` leaves the round-robin turn where it
        is (a fallback pool most calls never reach) and orders by weight at random."""
        weights = [member.weight for member in pool.members]
        if pool.strategy is Strategy.ROUND_ROBIN and advance:
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
