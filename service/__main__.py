"""Command line: `python -m service --config FILE` (or `llm-gateway --config FILE`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from service.auth.devtoken import mint
from service.auth.verifier import DEFAULT_SCOPES
from service.config import ConfigError, load_config
from service.exposure import plaintext_credential_warnings
from service.logs import setup_logging
from service.server import serve
from service.workers.role import worker_count
from service.workers.supervisor import Supervisor

log = logging.getLogger("service")

EXIT_CONFIG = 2
EXIT_LISTEN = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "check-config", "verify-audit", "token"),
        help="serve (default); chat / models: the terminal client (llm-gateway chat -h); "
        "check-config: validate the file and exit; "
        "verify-audit FILE: check an audit log's hash chain; "
        "token: print a development token (HS* issuer of the config)",
    )
    parser.add_argument("path", nargs="?", help="the audit log, with verify-audit")
    token = parser.add_argument_group("token")
    token.add_argument("--sub", default="developer", help="subject (default: developer)")
    token.add_argument("--tenant", default="", help="tenant claim")
    token.add_argument("--scope", default=" ".join(DEFAULT_SCOPES), help="space-separated scopes")
    token.add_argument("--models", default=None, help="comma-separated model patterns")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    parser.add_argument(
        "--config",
        default=os.environ.get("LLM_GATEWAY_CONFIG"),
        help="YAML configuration file (default: $LLM_GATEWAY_CONFIG)",
    )
    return parser


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs the server on uvloop, the faster event loop (grpc.aio works on any asyncio
    loop); on the standard loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] in (["chat"], ["models"]):
        # The terminal client, a caller of the gateway like any other.
        from llmgateway_client.cli import main as client_main

        return client_main(arguments)
    args = _parser().parse_args(argv)
    if args.command == "verify-audit":
        from service.audit.cli import verify_main

        if not args.path:
            print("error: verify-audit needs the audit log's path", file=sys.stderr)
            return EXIT_CONFIG
        return verify_main(args.path)
    if not args.config:
        print("error: --config FILE is required (or set LLM_GATEWAY_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error in {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        for warning in plaintext_credential_warnings(loaded.config):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.config}: ok")
        return 0
    if args.command == "token":
        try:
            print(
                mint(
                    loaded.config.auth,
                    os.environ,
                    args.sub,
                    tenant=args.tenant,
                    scopes=args.scope.split(),
                    models=args.models.split(",") if args.models else None,
                    ttl=args.ttl,
                )
            )
        except ConfigError as exc:
            print(f"configuration error in {args.config}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    setup_logging(loaded.config.logging.level or "info")
    for name in loaded.skipped_providers:
        log.info(
            "provider skipped: its API key variable is not set",
            extra={"fields": {"provider": name}},
        )
    try:
        if worker_count(loaded.config.server) > 1:
            return asyncio.run(Supervisor(loaded.config).run())
        run(serve(loaded.config, as_written=loaded.as_written))
    except ConfigError as exc:
        print(f"configuration error in {args.config}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start", extra={"fields": {"reason": str(exc)}})
        return EXIT_LISTEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
