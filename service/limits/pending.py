"""Budget spend that could not be added while the store failed, kept until it answers.

A call let through during an outage (on_failure ALLOW) still costs money: its spend is
kept here, per store key (subject or tenant, and period), and added to the store once
it answers again. Amounts for one key are summed, so memory follows the callers and
periods, not the calls. At most `max_keys` keys are kept: spend for a new key beyond
that is dropped and counted. Spend whose period (and its slack) has ended by the time
the store answers is dropped and counted too: that budget no longer exists.

Pure: the wall-clock time is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class PendingSpend:
    key: str
    nanos: int
    expires: float  # Unix time after which the spend's key no longer matters
    spends: int = 1  # the settlements summed into this one

    def merged(self, other: PendingSpend) -> PendingSpend:
        return PendingSpend(
            self.key,
            self.nanos + other.nanos,
            max(self.expires, other.expires),
            self.spends + other.spends,
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

    def add(self, key: str, nanos: int, expires: float) -> bool:
        """Keeps `nanos` for `key`; False (and counted) when there is no room."""
        if nanos <= 0:
            return True
        entry = self._entries.get(key)
        if entry is None and len(self._entries) >= self.max_keys:
            self.dropped += 1
            return False
        spend = PendingSpend(key, nanos, expires)
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
