"""A TCP proxy on loopback that injects what HTTP cannot express: accepting and never
answering, resetting after some bytes, delaying the first byte. Counts connections."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Fault:
    mode: str = "pass"  # "pass", "blackhole", "reset_after", "delay_first_byte"
    after_bytes: int = 0  # reset_after: response bytes forwarded before the reset
    delay: float = 0.0  # delay_first_byte: seconds


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.fault = Fault()
        self.connections = 0
        self.open_connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
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

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open_connections += 1
        fault = self.fault
        try:
            if fault.mode == "blackhole":
                await client_reader.read()  # swallow everything until the client gives up
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            pump_up = asyncio.create_task(self._pump(client_reader, upstream_writer))
            try:
                await self._pump_down(upstream_reader, client_writer, fault)
            finally:
                pump_up.cancel()
                with contextlib.suppress(BaseException):
                    await pump_up
                upstream_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                client_writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    @staticmethod
    async def _pump_down(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault
    ) -> None:
        sent = 0
        first = True
        while data := await reader.read(65536):
            if first and fault.mode == "delay_first_byte":
                await asyncio.sleep(fault.delay)
            first = False
            if fault.mode == "reset_after" and sent + len(data) >= fault.after_bytes:
                writer.write(data[: max(0, fault.after_bytes - sent)])
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(data)
            await writer.drain()
            sent += len(data)
