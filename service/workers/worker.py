"""One worker process: `python -m service.workers.worker`, started by the supervisor only.

It serves the config the supervisor validated (from the run directory) on the port the
supervisor chose, writes one line to the ready pipe once it listens, and drains on
SIGTERM like a single-process gateway. It exits when the supervisor dies, however it dies.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

from service.__main__ import EXIT_CONFIG, EXIT_LISTEN, run
from service.config import ConfigError
from service.logs import setup_logging
from service.server import serve
from service.workers.role import WorkerRole, read_config, worker_config

log = logging.getLogger("service")
_PR_SET_PDEATHSIG = 1


class _WorkerField(logging.Filter):
    """Every log line of a worker says which worker wrote it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {"worker": self._index, **(fields if isinstance(fields, dict) else {})}
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway-worker", description=__doc__)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    return parser


def _die_with_parent(supervisor: int) -> None:
    """SIGTERM when the supervisor exits, even by SIGKILL (Linux); then drain as usual."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _die_with_parent(int(os.environ.get("LLM_GATEWAY_SUPERVISOR_PID", os.getppid())))
    role = WorkerRole(index=args.worker, count=args.workers, run_dir=args.run_dir)
    config = worker_config(read_config(args.run_dir), role, args.port)
    setup_logging(config.logging.level or "info")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(role.index))

    def ready(port: int) -> None:
        os.write(args.ready_fd, f"{port}\n".encode())
        os.close(args.ready_fd)

    try:
        run(serve(config, role=role, ready=ready))
    except ConfigError as exc:
        log.error("configuration error", extra={"fields": {"reason": str(exc)}})
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start", extra={"fields": {"reason": str(exc), "worker": role.index}})
        return EXIT_LISTEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
