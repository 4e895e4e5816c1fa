"""The audit sink: a bounded queue on the event loop, a writer thread behind it.

`submit(record)` never blocks and never awaits: the record goes into a bounded asyncio
queue, or — when the queue is full, or the sink is closed — is dropped and counted. A
writer task takes records off the queue in batches (what arrives within a short window,
DEFAULT_BATCH_WINDOW) and hands each batch to one worker thread, which encodes it
(chaining it when `hash_chain` is on), appends it to the file with one write and fsyncs
at most once a second. The event loop never touches the file.

Every record submitted ends up in exactly one counter: `written`, `dropped` (queue full,
sink closed, write failed, not encodable) or `discarded` (no path configured: records are
counted but go nowhere). Drops are logged (rate-limited); a failing write is logged once
per outage, without record contents, and the writer goes on with the next batch,
reopening the file (and re-reading its chain head) first.

`close()` waits (bounded) for calls still in flight to submit their records — grpc.aio's
`server.stop()` returns before cancelled handlers have unwound — then drains the queue,
fsyncs and closes the file. Records that still could not be written are counted as
dropped; a batch cut off by the close timeout may nevertheless have reached the file.

Path "-" writes to stdout. An existing file is appended to; with `hash_chain` the chain
continues from its last record (a file whose last line is not a chained record starts a
new chain, with a warning; a cut-off last line is ended first so that it stays one
broken line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Protocol

from llmgateway.config.v1 import config_pb2

from service.audit.chain import GENESIS, Chain, canonical_json, head_of_line
from service.audit.record import SEQUENCE_FIELD

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10000
DEFAULT_BATCH_SIZE = 256
# How long the writer lets a batch gather before handing it to its thread: one hand-off
# (and one wake-up of the thread, which then contends for the GIL with the event loop)
# per window rather than per call when calls end one at a time.
DEFAULT_BATCH_WINDOW = 0.02
DEFAULT_CLOSE_TIMEOUT = 5.0  # each of: waiting for calls, draining the queue
SYNC_INTERVAL = 1.0  # seconds between two fsyncs while records keep coming
DROP_LOG_INTERVAL = 10.0
TAIL_BYTES = 1 << 20  # how much of an existing file is read to find its last record
FILE_MODE = 0o640


class Output(Protocol):
    """Where encoded batches go. Every method runs in the sink's writer thread."""

    @property
    def name(self) -> str: ...

    def open(self) -> bytes | None:
        """Opens (or reopens) the destination; returns its last complete line, if any."""
        ...

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Flushes to stable storage where that means something."""
        ...

    def close(self) -> None: ...


def _last_line(fd: int) -> tuple[bytes | None, bool]:
    """(last complete line with its newline, or None; whether the file ends mid-line)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, False
    start = max(0, size - TAIL_BYTES)
    tail = os.pread(fd, size - start, start)
    cut_off = not tail.endswith(b"\n")
    complete = tail[: tail.rfind(b"\n") + 1]
    if not complete:
        return None, cut_off
    begin = complete.rfind(b"\n", 0, len(complete) - 1) + 1
    if begin == 0 and start > 0:
        return None, cut_off  # the line is longer than the window: not a record of ours
    return complete[begin:], cut_off


class FileOutput:
    """Appends to a file (created 0640, umask applied); fsync on sync()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def name(self) -> str:
        return self.path

    def open(self) -> bytes | None:
        self.close()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            last, cut_off = _last_line(fd)
            if cut_off:
                self._write_all(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return last

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError("the audit log is not open")
        self._write_all(self._fd, data)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class StreamOutput:
    """Writes to a binary stream it does not own (stdout): flushed, never fsynced or closed."""

    def __init__(self, stream: BinaryIO | None = None, name: str = "-") -> None:
        self._stream = stream
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def open(self) -> bytes | None:
        if self._stream is None:
            self._stream = sys.stdout.buffer
        return None

    def write(self, data: bytes) -> None:
        if self._stream is None:
            raise OSError("the audit stream is not open")
        self._stream.write(data)
        self._stream.flush()

    def sync(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        self.sync()


class AuditSink:
    def __init__(
        self,
        output: Output | None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        hash_chain: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        batch_window: float = DEFAULT_BATCH_WINDOW,
    ) -> None:
        self._output = output
        self.hash_chain = hash_chain
        self.queue_size = max(1, queue_size)  # 0 would make asyncio.Queue unbounded
        self._batch_size = max(1, batch_size)
        self._batch_window = max(0.0, batch_window)
        self._close_timeout = close_timeout
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._closing = False
        self._open_calls = 0
        self._calls_idle = asyncio.Event()
        self._calls_idle.set()
        # Writer-thread state: touched only inside the worker thread once started.
        self._chain: Chain | None = None
        self._needs_open = True
        self._last_sync = 0.0
        # Loop-side state and counters.
        self._failing = False
        self._last_drop_log: float | None = None
        self.submitted = 0
        self.written = 0
        self.dropped = 0
        self.discarded = 0
        self.write_errors = 0

    @classmethod
    def from_config(cls, config: config_pb2.AuditConfig) -> AuditSink:
        output: Output | None = None
        if config.path == "-":
            output = StreamOutput()
        elif config.path:
            output = FileOutput(config.path)
        return cls(
            output,
            queue_size=config.queue_size if config.HasField("queue_size") else DEFAULT_QUEUE_SIZE,
            hash_chain=config.hash_chain,
        )

    # --- state ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def open_calls(self) -> int:
        return self._open_calls

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "written": self.written,
            "dropped": self.dropped,
            "discarded": self.discarded,
            "queued": self.queued,
            "write_errors": self.write_errors,
        }

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the destination (an unusable path fails here, before serving)."""
        if self._task is not None or self._output is None:
            return
        if self._closed:
            raise RuntimeError("the audit sink is closed")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_output)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._task = loop.create_task(self._run(), name="audit-writer")

    def begin_call(self) -> None:
        """A call started whose record will be submitted: close() waits for it."""
        self._open_calls += 1
        self._calls_idle.clear()

    def end_call(self) -> None:
        self._open_calls = max(0, self._open_calls - 1)
        if self._open_calls == 0:
            self._calls_idle.set()

    def submit(self, record: dict[str, Any]) -> None:
        """Numbers one record (its `seq`) and queues it; never blocks. The record must
        not be changed afterwards."""
        self.submitted += 1
        record[SEQUENCE_FIELD] = self.submitted
        if self._closed:
            self._drop(1, "the audit log is closed")
        elif self._output is None:
            self.discarded += 1
        else:
            try:
                self._queue.put_nowait(record)
            except asyncio.QueueFull:
                self._drop(1, "the audit queue is full")

    def lose(self, why: str) -> None:
        """Counts a record that could not even be built (submitted and dropped)."""
        self.submitted += 1
        self._drop(1, why)

    async def close(self) -> None:
        """Waits for open calls, drains the queue, fsyncs and closes; each step bounded."""
        if self._closing:
            return
        self._closing = True
        budget = self._close_timeout
        if self._open_calls:
            try:
                await asyncio.wait_for(self._calls_idle.wait(), budget)
            except TimeoutError:
                log.warning(
                    "audit log closing with calls still in flight: their records are lost",
                    extra={"fields": {"open_calls": self._open_calls}},
                )
        self._closed = True
        if self._task is not None:
            await self._drain(budget)
        elif self.queued:  # never started: nothing will write them
            left = self.queued
            while not self._queue.empty():
                self._queue.get_nowait()
            self._drop(left, "the audit log was never started")
        fields: dict[str, object] = dict(self.stats())
        if self._chain is not None:
            fields["chain_head"] = self._chain.head
        log.info("audit log closed", extra={"fields": fields})

    async def _drain(self, budget: float) -> None:
        assert self._task is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            await asyncio.wait_for(self._queue.join(), budget)
        except TimeoutError:
            log.error(
                "audit log: could not write the remaining records in time",
                extra={"fields": {"queued": self.queued, "timeout_s": budget}},
            )
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        left = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            left += 1
        if left:
            self._drop(left, "the audit log closed before they were written")
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._close_output),
                max(0.1, deadline - loop.time()),
            )
        except Exception as exc:
            log.error(
                "audit log: final flush failed",
                extra={"fields": {"error": type(exc).__name__, "detail": _oserror(exc)}},
            )
        self._executor.shutdown(wait=False)

    # --- loop side -------------------------------------------------------------------------

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            log.warning(
                "audit records dropped",
                extra={"fields": {"why": why, "dropped_total": self.dropped}},
            )

    async def _run(self) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            try:
                if self._batch_window and self._queue.qsize() < self._batch_size - 1:
                    await asyncio.sleep(self._batch_window)
                while len(batch) < self._batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                written = await loop.run_in_executor(self._executor, self._write_batch, batch)
            except asyncio.CancelledError:
                self._drop(len(batch), "the audit log closed while they were being written")
                raise
            except Exception as exc:
                self.write_errors += 1
                self._drop(len(batch), "writing the audit log failed")
                if not self._failing:
                    self._failing = True
                    log.error(
                        "audit log: write failed; the writer goes on with the next records",
                        extra={
                            "fields": {
                                "error": type(exc).__name__,
                                "detail": _oserror(exc),
                                "records_lost": len(batch),
                            }
                        },
                    )
            else:
                self.written += written
                if written < len(batch):
                    self._drop(len(batch) - written, "records could not be encoded")
                if self._failing:
                    self._failing = False
                    log.warning(
                        "audit log: writing again",
                        extra={"fields": {"dropped_total": self.dropped}},
                    )
            finally:
                for _ in batch:
                    self._queue.task_done()

    # --- writer thread ---------------------------------------------------------------------

    def _open_output(self) -> None:
        assert self._output is not None
        last = self._output.open()
        self._needs_open = False
        if not self.hash_chain:
            return
        head = head_of_line(last) if last is not None else GENESIS
        if head is None:
            log.warning(
                "audit log: the last line is not a chained record; a new chain starts",
                extra={"fields": {"path": self._output.name}},
            )
        self._chain = Chain(head or GENESIS)

    def _encode(self, record: dict[str, Any]) -> str:
        if self._chain is not None:
            return self._chain.line(record)
        return canonical_json(record) if self.hash_chain else _plain_json(record)

    def _write_batch(self, batch: list[dict[str, Any]]) -> int:
        """Encodes and appends a batch; returns how many records it holds."""
        assert self._output is not None
        try:
            if self._needs_open:
                with contextlib.suppress(OSError):
                    self._output.close()
                self._open_output()
            lines: list[str] = []
            for record in batch:
                try:
                    lines.append(self._encode(record))
                except (TypeError, ValueError):
                    log.error("audit log: a record could not be encoded (dropped)")
            if lines:
                self._output.write(("\n".join(lines) + "\n").encode("utf-8"))
            now = time.monotonic()
            if now - self._last_sync >= SYNC_INTERVAL:
                self._last_sync = now
                self._output.sync()
        except BaseException:
            # What reached the file is unknown: reopen, and take the chain head from the
            # file itself, before the next batch.
            self._needs_open = True
            raise
        return len(lines)

    def _close_output(self) -> None:
        assert self._output is not None
        if not self._needs_open:
            self._output.sync()
        self._output.close()


def _plain_json(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _oserror(exc: BaseException) -> str:
    """What may be logged about a failure: never a record's contents."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
