"""A TCP proxy on loopback that injects what HTTP cannot express: accepting and never
answering, resetting after some bytes, delaying the first byte. Counts connections.
Also a listener that never completes a connect (NeverAccepts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Self

from tests.fakes.loopback import LoopbackServer


@dataclass
class Fault:
    mode: str = "pass"  # "pass", "blackhole", "reset_after", "delay_first_byte"
    after_bytes: int = 0  # reset_after: response bytes forwarded before the reset
    delay: float = 0.0  # delay_first_byte: seconds


class FaultProxy(LoopbackServer):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.fault = Fault()

    async def handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        fault = self.fault
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


@dataclass
class NeverAccepts:
    """A loopback listener whose accept queue is full and that never accepts: the kernel
    drops new SYNs, so a connect to it gets no answer until the client's connect timeout.

    `listen(0)` queues at most one handshake (Linux); fillers connect until one of them
    does not complete (bounded). `full` says whether that worked on this system."""

    max_fillers: int = 8
    probe_timeout: float = 0.2
    port: int = 0
    full: bool = False
    _listener: socket.socket | None = None
    _fillers: list[socket.socket] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._listener = listener
        self.port = listener.getsockname()[1]
        loop = asyncio.get_running_loop()
        for _ in range(self.max_fillers):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                await asyncio.wait_for(
                    loop.sock_connect(filler, ("127.0.0.1", self.port)), self.probe_timeout
                )
            except TimeoutError:
                filler.close()  # its SYN was dropped: the queue is full
                self.full = True
                break
            self._fillers.append(filler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
