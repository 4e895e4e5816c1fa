"""Model discovery: providers that offer a model list (OpenAI-compatible `/v1/models`,
Ollama `/api/tags`, Gemini `models.list`) and opt in (`discovery` on the provider) are
asked for it in the background, at start and then every `refresh`.

The lists only feed ListModels (as "provider/model", when direct addressing is
allowed); no call ever waits for a refresh. A failed refresh is logged (the provider
and the reason, never the response body) and counted, and the last list is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from llmgateway.config.v1 import config_pb2

from service.config import seconds_or
from service.errors import GatewayError
from service.providers.base import Provider

log = logging.getLogger(__name__)

DEFAULT_REFRESH = 60.0
MAX_REFRESH_WAIT = 30.0  # one refresh's upstream request, at most


@dataclass
class Discovered:
    """One provider's discovery: its last list, and how its refreshes went."""

    refresh: float
    models: tuple[str, ...] = ()
    refreshes: int = 0  # successful
    failures: int = 0


class Discovery:
    def __init__(self, providers: Mapping[str, Provider], refresh: Mapping[str, float]) -> None:
        self._providers = providers
        self.state = {name: Discovered(seconds) for name, seconds in refresh.items()}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_config(
        cls, config: config_pb2.GatewayConfig, providers: Mapping[str, Provider]
    ) -> Discovery:
        refresh = {
            p.name: seconds_or(p.discovery, "refresh", DEFAULT_REFRESH)
            for p in config.providers
            if p.HasField("discovery") and p.name in providers
        }
        return cls(providers, refresh)

    def models(self, provider: str) -> tuple[str, ...]:
        state = self.state.get(provider)
        return state.models if state is not None else ()

    def start(self) -> None:
        for name in self.state:
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"discovery {name}"))

    async def _loop(self, name: str) -> None:
        while True:
            await self.refresh(name)
            await asyncio.sleep(self.state[name].refresh)

    async def refresh(self, name: str) -> None:
        """Asks the provider for its list once; keeps the last one when that fails."""
        state = self.state[name]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(state.refresh, MAX_REFRESH_WAIT)
        try:
            async with asyncio.timeout_at(deadline):
                models = await self._providers[name].list_models(deadline)
        except Exception as exc:  # background work: every failure is counted, none escapes
            state.failures += 1
            reason = exc.reason if isinstance(exc, GatewayError) else type(exc).__name__
            fields = {"provider": name, "reason": reason, "failures": state.failures}
            log.warning("model discovery failed; the last list is kept", extra={"fields": fields})
            return
        state.models = tuple(sorted(set(models or ())))
        state.refreshes += 1

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
