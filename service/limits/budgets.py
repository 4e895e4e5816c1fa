"""Spend budgets per calendar period in UTC. Pure: the wall-clock time is a parameter.

Money is counted in whole nano-dollars (1e-9 USD) so that sums are exact (a spend
that reaches the budget exactly is refused, whatever the order of the additions)
and a shared store can add with an integer increment.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from llmgateway.config.v1 import config_pb2

NANOS_PER_USD = 1_000_000_000


class Period(enum.Enum):
    DAY = "day"
    MONTH = "month"

    @classmethod
    def from_config(cls, value: config_pb2.BudgetPeriod.ValueType) -> Period:
        """BUDGET_PERIOD_UNSPECIFIED means a month."""
        return cls.DAY if value == config_pb2.BUDGET_PERIOD_DAY else cls.MONTH

    @property
    def adjective(self) -> str:
        return "daily" if self is Period.DAY else "monthly"


@dataclass(frozen=True)
class Window:
    """One calendar period: its key ("2025-06-30" or "2025-06") and its bounds as
    Unix times, start included, end excluded."""

    key: str
    start: float
    end: float

    def remaining(self, now: float) -> float:
        """Seconds from `now` until the period ends."""
        return max(0.0, self.end - now)


def window(period: Period, now: float) -> Window:
    """The period that contains the Unix time `now`, in UTC."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if period is Period.DAY:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        key = start.strftime("%Y-%m-%d")
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start.month == 12:
            end = start.replace(year=start.year + 1, month=1)
        else:
            end = start.replace(month=start.month + 1)
        key = start.strftime("%Y-%m")
    return Window(key=key, start=start.timestamp(), end=end.timestamp())


def to_nanos(usd: float) -> int:
    """Dollars as whole nano-dollars; not-a-number and negative amounts are 0."""
    if not math.isfinite(usd) or usd <= 0:
        return 0
    return round(usd * NANOS_PER_USD)


def budget_nanos(budget_usd: float) -> int | None:
    """A configured budget in nano-dollars; None when there is none (zero, negative,
    not a number or infinite)."""
    if not math.isfinite(budget_usd) or budget_usd <= 0:
        return None
    return max(1, round(budget_usd * NANOS_PER_USD))


def exhausted(spent: int, budget: int) -> bool:
    """A budget that is exactly reached is exhausted."""
    return spent >= budget


def format_usd(nanos: int) -> str:
    """ "$10.00", or more decimals when cents would hide the amount ("$0.0025")."""
    usd = nanos / NANOS_PER_USD
    if nanos % (NANOS_PER_USD // 100) == 0:
        return f"${usd:.2f}"
    return "$" + f"{usd:.9f}".rstrip("0")
