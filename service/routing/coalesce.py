"""Request coalescing: identical calls in flight at the same time share one upstream
call.

The first call starts the work in a task of its own; later identical calls wait for
the same result. A caller that goes away stops waiting, and the work is cancelled
(closing its upstream request) only when no caller is left waiting for it, so one
impatient caller never fails the others and no upstream call outlives all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0
    owner_left: bool = False  # the caller that started it went away before the result
    claimed: bool = False  # a later caller took its place


class Coalescer(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self.shared = 0  # results given to a caller that joined another's work

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: str) -> bool:
        return key in self._flights

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of `work` for `key`, and whether it was shared from a call that
        was already in flight (True) or is this caller's own (False). When the caller
        that started the work has gone, the first caller to get its result takes its
        place (False): exactly one caller owns every result."""
        flight = self._flights.get(key)
        owner = flight is None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _task: self._forget(key, flight))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if owner and not flight.task.done():
                flight.owner_left = True
            if flight.waiters == 0 and not flight.task.done():
                # The last caller went away: a new one must not join a cancelled flight.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                flight.task.cancel()
        if owner:
            return result, False
        if flight.owner_left and not flight.claimed:
            flight.claimed = True
            return result, False
        self.shared += 1
        return result, True

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: a failure nobody awaited is not logged
