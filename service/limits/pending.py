"""Spend that could not be charged while the store failed, kept until it answers.

A call let through during an outage (on_failure ALLOW) still costs money and tokens:
its cost (per budget key: subject or tenant, and period) and its token usage (per
tokens-per-minute bucket, with the bucket's rate) are kept here and charged to the
store once it answers again. Amounts for one key are summed, so memory follows the
callers and periods, not the calls. At most `max_keys` keys are kept: spend for a new
key beyond that is dropped and counted. Spend that no longer matters by the time the
store answers is dropped and counted too: a budget whose period (and its slack) has
ended, token usage older than the bucket's minute (charging it later would only hold
back the calls of a later minute).

Pure: the wall-clock time is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.limits.buckets import Rate

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class PendingSpend:
    key: str
    amount: int  # nano-dollars for a budget key; tokens for a bucket
    expires: float  # Unix time after which the spend no longer matters
    spends: int = 1  # the settlements summed into this one
    rate: Rate | None = None  # a bucket's rate; None: a budget's spend

    def merged(self, other: PendingSpend) -> PendingSpend:
        return PendingSpend(
            self.key,
            self.amount + other.amount,
            max(self.expires, other.expires),
            self.spends + other.spends,
            other.rate or self.rate,
        )


class PendingSpends:
    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._entries: dict[str, PendingSpend] = {}
        self.queued = 0  # spends kept to be added later
        self.charged = 0  # spends added to the store after all
        self.dropped = 0  # spends lost: no room, or their period ended

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, amount: int, expires: float, rate: Rate | None = None) -> bool:
        """Keeps `amount` for `key` (a bucket's when `rate` is given, else a budget's);
        False (and counted) when there is no room."""
        if amount <= 0:
            return True
        entry = self._entries.get(key)
        if entry is None and len(self._entries) >= self.max_keys:
            self.dropped += 1
            return False
        spend = PendingSpend(key, amount, expires, rate=rate)
        self._entries[key] = spend if entry is None else entry.merged(spend)
        self.queued += 1
        return True

    def take(self, now: float) -> list[PendingSpend]:
        """Every spend still worth adding, removed from here; the expired are dropped.
        Give back with `restore` what could not be added."""
        entries = list(self._entries.values())
        self._entries.clear()
        live = [entry for entry in entries if entry.expires > now]
        self.dropped += sum(entry.spends for entry in entries if entry.expires <= now)
        return live

    def charged_one(self, entry: PendingSpend) -> None:
        """`entry`, taken from here, was added to the store."""
        self.charged += entry.spends

    def restore(self, entries: list[PendingSpend]) -> None:
        """Puts back spends that could not be added, merged with any kept since."""
        for entry in entries:
            current = self._entries.get(entry.key)
            if current is None and len(self._entries) >= self.max_keys:
                self.dropped += entry.spends
                continue
            self._entries[entry.key] = entry if current is None else current.merged(entry)

    def stats(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "charged": self.charged,
            "dropped": self.dropped,
            "pending": len(self._entries),
        }
