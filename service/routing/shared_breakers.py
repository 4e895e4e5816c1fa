"""Circuit breakers that learn together: openings published through the shared store.

A replica whose breaker opens writes `breaker:open:<deployment>` with the cool-down as
its expiry; every replica reads those keys every `POLL_INTERVAL` and opens its own
breaker for the time left, so the others stop calling the deployment within a second
instead of each paying its own failures. When the cool-down ends, the one probe is
shared too: a replica whose breaker would probe first takes `breaker:probe:<deployment>`
(SET NX, expiring after the cool-down); the others wait while it is held. A probe that
succeeds deletes both keys (the others may then probe at once); one that fails opens
the breaker again, published for its longer cool-down.

Keys expire by themselves, so a replica that dies leaves nothing behind for longer than
a cool-down. When the store fails (or its guard has paused it), each replica's breaker
works on its own, as without sharing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from service.providers.base import Deployment
from service.routing.breaker import CircuitBreaker, State
from service.shared_store.connection import SharedRedis, StoreUnavailable

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5

# KEYS: the probe key. ARGV: its expiry in ms. Returns -1 when taken, else the ms left
# of the probe another replica holds.
_CLAIM = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return -1
end
return redis.call('PTTL', KEYS[1])
"""


class SharedBreakers:
    def __init__(self, shared: SharedRedis, breaker_of: Callable[[Deployment], CircuitBreaker]):
        self.shared = shared
        self._breaker_of = breaker_of
        self._claim = shared.client.register_script(_CLAIM)
        self._watched: dict[str, Deployment] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0  # openings this replica published
        self.followed = 0  # openings of other replicas this replica followed

    def watch(self, deployments: Iterable[Deployment]) -> None:
        """Shares the breakers of `deployments` (those whose settings say `shared`)."""
        for deployment in deployments:
            breaker = self._breaker_of(deployment)
            if not breaker.settings.shared or deployment.key in self._watched:
                continue
            self._watched[deployment.key] = deployment
            breaker.on_open = _bind(self._spawn, self.publish_open, deployment)
            breaker.on_close = _bind0(self._spawn, self.publish_closed, deployment)

    @property
    def watched(self) -> Iterable[Deployment]:
        return self._watched.values()

    def shares(self, deployment: Deployment) -> bool:
        return deployment.key in self._watched

    def _open_key(self, deployment: Deployment) -> str:
        return self.shared.key(f"breaker:open:{deployment.key}")

    def _probe_key(self, deployment: Deployment) -> str:
        return self.shared.key(f"breaker:probe:{deployment.key}")

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish_open(self, deployment: Deployment, cool_down: float) -> None:
        ms = max(1, round(cool_down * 1000))
        key = self._open_key(deployment)
        if await self._try(lambda: self.shared.client.set(key, "1", px=ms)):
            self.published += 1

    async def publish_closed(self, deployment: Deployment) -> None:
        keys = [self._open_key(deployment), self._probe_key(deployment)]
        await self._try(lambda: self.shared.client.delete(*keys))

    async def claim_probe(self, deployment: Deployment, breaker: CircuitBreaker) -> bool:
        """May this replica send the deployment's probe? False when another replica
        holds it (this breaker then waits for as long as that probe may take)."""
        ms = max(1, round(breaker.settings.cool_down * 1000))
        key = self._probe_key(deployment)
        try:
            left = await self.shared.run(lambda: self._claim(keys=[key], args=[ms]))
        except StoreUnavailable:
            return True  # the store cannot tell: this replica's own breaker decides
        if int(left) == -1:
            return True
        breaker.hold(max(int(left), 1) / 1000)
        return False

    async def poll(self) -> None:
        """Reads every watched deployment's published opening once."""
        if not self._watched:
            return
        deployments = list(self._watched.values())

        async def read() -> list[Any]:
            pipe = self.shared.client.pipeline(transaction=False)
            for deployment in deployments:
                pipe.pttl(self._open_key(deployment))
            return await pipe.execute()

        try:
            remaining = await self.shared.run(read)
        except StoreUnavailable:
            return
        for deployment, ms in zip(deployments, remaining, strict=True):
            breaker = self._breaker_of(deployment)
            if int(ms) > 0:
                was = breaker.state
                breaker.open_from_peer(int(ms) / 1000)
                if was is not State.OPEN and breaker.state is State.OPEN:
                    self.followed += 1
            elif int(ms) == -2:  # no key: nobody holds it open
                breaker.peer_closed()

    async def run(self, interval: float = POLL_INTERVAL) -> None:
        """`poll` every `interval` seconds, until cancelled."""
        while True:
            try:
                await self.poll()
            except Exception:  # the next poll tries again; a bug must not end the loop
                log.exception("reading shared breakers failed")
            await asyncio.sleep(interval)

    async def _try(self, operation: Callable[[], Awaitable[Any]]) -> bool:
        try:
            await self.shared.run(operation)
        except StoreUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Waits for the publications still under way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _bind(
    spawn: Callable[[Awaitable[None]], None],
    publish: Callable[[Deployment, float], Awaitable[None]],
    deployment: Deployment,
) -> Callable[[float], None]:
    return lambda cool_down: spawn(publish(deployment, cool_down))


def _bind0(
    spawn: Callable[[Awaitable[None]], None],
    publish: Callable[[Deployment], Awaitable[None]],
    deployment: Deployment,
) -> Callable[[], None]:
    return lambda: spawn(publish(deployment))
