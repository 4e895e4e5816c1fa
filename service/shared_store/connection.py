"""One Redis connection shared by everything replicas share (limits, the response
cache, breakers), behind the store's guard (guard.py).

Every operation either answers or raises StoreUnavailable, within the configured
timeout: unreachable, timed out, refused, or skipped because the guard has paused the
store after failures in a row. The users decide what a failure means (limits: the
configured on_failure; the cache: a miss; breakers: this process's own view).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import redis.asyncio as redis
from llmgateway.config.v1 import config_pb2
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.config_base import seconds_or
from service.shared_store.guard import (
    DEFAULT_FAILURES_TO_PAUSE,
    DEFAULT_PAUSE,
    GuardSettings,
    GuardState,
    StoreGuard,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PREFIX = "llmgw:"
DEFAULT_TIMEOUT = 0.25
DEFAULT_MAX_CONNECTIONS = 64


class StoreUnavailable(Exception):
    """The shared store did not answer (or was not asked: the guard paused it). The
    message never holds the URL."""


def shared_store_config(config: config_pb2.GatewayConfig) -> config_pb2.RedisStoreConfig | None:
    """The shared store's settings: `redis`, or its older name `limits.redis`."""
    if config.HasField("redis"):
        return config.redis
    if config.limits.HasField("redis"):
        return config.limits.redis
    return None


class SharedRedis:
    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str = DEFAULT_PREFIX,
        guard: StoreGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.guard = guard or StoreGuard(GuardSettings(), clock)

    @classmethod
    def from_config(
        cls,
        config: config_pb2.RedisStoreConfig,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> SharedRedis:
        timeout = seconds_or(config, "timeout", DEFAULT_TIMEOUT)
        # Blocking: a burst of calls waits (up to the timeout) for a free connection
        # instead of failing, which would read as an outage and lift the limits.
        pool = redis.BlockingConnectionPool.from_url(
            environ[config.url_env],
            max_connections=(
                config.max_connections
                if config.HasField("max_connections")
                else DEFAULT_MAX_CONNECTIONS
            ),
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # The users decide what a failure means; a retry here would double the wait.
            retry=Retry(NoBackoff(), 0),
        )
        settings = GuardSettings(
            failures_to_pause=(
                config.failures_to_pause
                if config.HasField("failures_to_pause")
                else DEFAULT_FAILURES_TO_PAUSE
            ),
            pause=seconds_or(config, "pause", DEFAULT_PAUSE),
        )
        return cls(
            redis.Redis(connection_pool=pool),
            config.key_prefix or DEFAULT_PREFIX,
            StoreGuard(settings, clock),
        )

    def key(self, name: str) -> str:
        return self.prefix + name

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs one operation, unless the guard has paused the store."""
        if not self.guard.allow():
            raise StoreUnavailable("the shared store is paused after failing")
        guard = self.guard
        try:
            result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            was = guard.state
            guard.failure()
            # The exception's text may hold the URL; its type is enough to act on.
            error = type(exc).__name__
            if was is GuardState.CLOSED and guard.state is GuardState.OPEN:
                log.warning(
                    "shared store paused",
                    extra={
                        "fields": {
                            "error": error,
                            "failures_in_a_row": guard.consecutive_failures,
                            "pause_seconds": guard.settings.pause,
                        }
                    },
                )
            raise StoreUnavailable(f"the shared store failed ({error})") from None
        except BaseException:
            guard.release()
            raise
        if guard.state is GuardState.HALF_OPEN:
            log.info("shared store answers again", extra={"fields": {"skipped": guard.skipped}})
        guard.success()
        return result

    async def reachable(self) -> bool:
        try:
            await self.run(self.client.ping)
        except StoreUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
