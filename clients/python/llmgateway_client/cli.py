"""The terminal client: `llm-gateway chat --model mock "prompt"`, `llm-gateway models`.

The reply streams to stdout as it arrives (reasoning dimmed on a terminal); one line of
route, usage, cost and timing follows on stderr, so stdout carries only the reply. A
failed call prints its status, reason and retry hint on stderr and exits 1."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from llmgateway.v1 import chat_pb2, content_pb2, route_pb2

from llmgateway_client.client import GatewayCallError, GatewayClient, user_message
from llmgateway_client.terminal import dimmed, error_lines, model_rows, summary_line

TOKEN_ENV = "LLM_GATEWAY_TOKEN"
TARGET_ENV = "LLM_GATEWAY_TARGET"
EXIT_FAILED_CALL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV, "localhost:50051"),
        help=f"the gateway's address (default: ${TARGET_ENV} or localhost:50051)",
    )
    common.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    common.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    common.add_argument("--ca", default=None, help="TLS with this CA certificate (PEM file)")
    common.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    common.add_argument("--json", action="store_true", help="print the responses as JSON lines")
    top = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", parents=[common], help="stream a reply to a prompt")
    chat.add_argument("prompt", nargs="?", help="the prompt (default: read from stdin)")
    chat.add_argument("--model", required=True, help="the model alias")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-tokens", type=int, default=None, help="max output tokens")
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--reasoning-budget", type=int, default=None, help="reasoning tokens")
    chat.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="dim the reasoning (auto: when stdout is a terminal and NO_COLOR is unset)",
    )
    commands.add_parser("models", parents=[common], help="list the model aliases")
    return top


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if args.ca:
        with open(args.ca, "rb") as ca:
            return grpc.ssl_channel_credentials(root_certificates=ca.read())
    if args.tls:
        return grpc.ssl_channel_credentials()
    return None


def chat_request(args: argparse.Namespace, prompt: str) -> chat_pb2.ChatRequest:
    messages = [user_message(prompt)]
    if args.system:
        system = content_pb2.Message(
            role=content_pb2.ROLE_SYSTEM, parts=[content_pb2.Part(text=args.system)]
        )
        messages.insert(0, system)
    config = chat_pb2.GenerationConfig()
    if args.max_tokens is not None:
        config.max_output_tokens = args.max_tokens
    if args.temperature is not None:
        config.temperature = args.temperature
    if args.reasoning_budget is not None:
        config.reasoning_budget_tokens = args.reasoning_budget
    return chat_pb2.ChatRequest(model=args.model, messages=messages, generation_config=config)


def use_color(choice: str, out: TextIO) -> bool:
    if choice == "auto":
        return out.isatty() and "NO_COLOR" not in os.environ
    return choice == "always"


def as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


async def run_chat(gateway: GatewayClient, args: argparse.Namespace, prompt: str) -> int:
    out, err = sys.stdout, sys.stderr
    color = use_color(args.color, out)
    request = chat_request(args, prompt)
    started = time.perf_counter()
    first_chunk: float | None = None
    received = False
    route: route_pb2.RouteInfo | None = None
    usage: route_pb2.Usage | None = None
    finish_reason: chat_pb2.FinishReason.ValueType = chat_pb2.FINISH_REASON_UNSPECIFIED
    in_reasoning = False
    try:
        async for chunk in gateway.stream_request(request, timeout=args.timeout):
            if first_chunk is None:
                first_chunk = time.perf_counter() - started
            received = True
            if chunk.HasField("route"):
                route = chunk.route
            if chunk.HasField("usage"):
                usage = chunk.usage
            if chunk.finish_reason:
                finish_reason = chunk.finish_reason
            if args.json:
                print(as_json(chunk), file=out, flush=True)
                continue
            if chunk.reasoning_delta:
                out.write(dimmed(chunk.reasoning_delta, color))
                in_reasoning = True
            if chunk.text_delta:
                if in_reasoning:
                    out.write("\n\n")
                    in_reasoning = False
                out.write(chunk.text_delta)
            for call in chunk.tool_call_deltas:
                if call.name:
                    out.write(f"\n[tool call {call.name}] ")
                out.write(call.arguments_delta)
            out.flush()
    except GatewayCallError as failure:
        if not args.json and received:
            out.write("\n")
            out.flush()
        for line in error_lines(failure.details):
            print(line, file=err)
        return EXIT_FAILED_CALL
    if not args.json:
        out.write("\n")
        out.flush()
        elapsed = time.perf_counter() - started
        print(summary_line(route, usage, finish_reason, first_chunk, elapsed), file=err)
    return 0


async def run_models(gateway: GatewayClient, args: argparse.Namespace) -> int:
    try:
        models = await gateway.list_models()
    except GatewayCallError as failure:
        for line in error_lines(failure.details):
            print(line, file=sys.stderr)
        return EXIT_FAILED_CALL
    if args.json:
        for model in models:
            print(as_json(model))
    else:
        print("\n".join(model_rows(models)))
    return 0


async def run(args: argparse.Namespace, prompt: str) -> int:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    async with GatewayClient(
        args.target, token, credentials=credentials(args), timeout=args.timeout
    ) as gateway:
        if args.command == "models":
            return await run_models(gateway, args)
        return await run_chat(gateway, args, prompt)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prompt = ""
    if args.command == "chat":
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        if not prompt.strip():
            print("error: an empty prompt (give one, or pipe it on stdin)", file=sys.stderr)
            return EXIT_USAGE
    try:
        return asyncio.run(run(args, prompt))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as error:  # an unreadable --ca file
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
