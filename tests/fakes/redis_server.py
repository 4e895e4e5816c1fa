"""A real redis-server on an ephemeral loopback port, for the shared limit store.

Persistence is off and the data lives only as long as the process. `stop()` and
`start()` make an outage and a recovery on the same port; `kill()` is a crash
(SIGKILL); `pause()` makes a server that hangs (SIGSTOP: connections are accepted by
the kernel, nothing answers, as in a network partition) until `resume()`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import free_port

# Every test server requires it, so that a URL that leaks would carry a recognisable secret.
REDIS_PASSWORD = "redis-pw-secret-4c2e91"


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(
                "redis-server is not installed (make test installs Debian's redis-server)"
            )
        self.binary = binary
        self.port = free_port()
        self._started_once = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts redis-server on `port`. The port was only free when chosen: if another
        process took it meanwhile, the first start tries again on a new port (a restart
        keeps its port, which clients already know)."""
        for _ in range(3):
            if self._start_once():
                self._started_once = True
                return
            if self._started_once:
                break
            self.port = free_port()
        raise AssertionError("redis-server did not start")

    def _start_once(self) -> bool:
        """True once the server answers PING; False if it exited (port taken)."""
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
                "--requirepass", REDIS_PASSWORD,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30  # a bound for loaded machines, not a wait
        while not self._answers():
            if self._process.poll() is not None:
                return False  # it exited: the port was taken
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("redis-server did not answer")
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot stop
            self._process.terminate()
            self._process.wait(10)
        self._process = None

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def pause(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def _answers(self) -> bool:
        """True when this process (not another one that took the port) answers."""
        assert self._process is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(f"AUTH {REDIS_PASSWORD}\r\nINFO server\r\n".encode())
                received = b""
                while b"process_id:" not in received or not received.endswith(b"\r\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    received += chunk
                return f"process_id:{self._process.pid}\r\n".encode() in received
        except OSError:
            return False


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
