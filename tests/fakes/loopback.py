"""A TCP server on an ephemeral loopback port that keeps count of its connections and
ends every one of them when it closes: the base of the fake upstreams and the fault proxy."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0
        self.open_connections = 0
        self.connections_accepted = 0
        self.most_open_connections = 0  # the highest number open at once
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One accepted connection; it is closed when this returns."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open_connections += 1
        self.connections_accepted += 1
        self.most_open_connections = max(self.most_open_connections, self.open_connections)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Closing the server ends its connections; a cancelled connection task
            # would otherwise be reported by asyncio's stream callback as an error.
            return
        finally:
            self.open_connections -= 1
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()
