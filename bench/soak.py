"""The soak: `make soak`. Mixed calls at a steady rate for SOAK_SECONDS (default 600),
the gateway's resident memory sampled every SOAK_SAMPLE seconds (default 10), and its
growth in MiB per minute: the least-squares slope over the second half of the samples
(the first half lets caches, pools and the allocator settle).

The processes are the benchmark's (bench/stack.py: fast fake upstream, gateway with
authentication and the audit log on). The calls, SOAK_RATE a second (default 100),
in a fixed rotation: Chat with the mock provider and through the upstream, StreamChat
both ways, Embed through the upstream, and three that must fail: an unknown model
(NOT_FOUND), no token (UNAUTHENTICATED), an empty request (INVALID_ARGUMENT). Every
call's status is checked against the one it must end with. Writes bench/soak.md, which
`make bench` appends to bench/results.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import uvloop
from llmgateway.v1 import chat_pb2, embed_pb2, provider_service_pb2_grpc

from bench.stack import CONFIG, ROOT, SECRET, Stack, chat_request, rss_mib

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RATE = float(os.environ.get("SOAK_RATE", "100"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "10"))
MAX_IN_FLIGHT = 256  # a call that would exceed it is counted as skipped, not sent
# The benchmark's gateway, and an embeddings alias on the same fake upstream.
SOAK_CONFIG = CONFIG + (
    "  - {{alias: embed, provider: upstream, upstream_model: text-embedding-3-small, "
    "capabilities: {{embeddings: true}}}}\n"
)


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute; 0 for fewer
    than two distinct times."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return covariance / spread * 60


def second_half(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return list(samples[len(samples) // 2 :])


@dataclass
class Soak:
    seconds: float
    rate: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s since start, MiB)
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind: STATUS"
    unexpected: int = 0
    skipped: int = 0

    @property
    def growth(self) -> float:
        return slope_per_minute(second_half(self.samples))

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())


class SoakStack(Stack):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        now = int(time.time())
        claims = {
            "iss": "bench",
            "aud": "llm-gateway",
            "sub": "bench",
            "iat": now,
            "exp": now + 3 * 3600,
            "scope": "chat embed",
        }
        self.token = jwt.encode(claims, SECRET, algorithm="HS256")

    def start(self) -> None:
        import bench.stack

        saved = bench.stack.CONFIG
        bench.stack.CONFIG = SOAK_CONFIG
        try:
            super().start()
        finally:
            bench.stack.CONFIG = saved


Call = Callable[[], Awaitable[object]]


def _calls(
    stub: provider_service_pb2_grpc.ProviderServiceStub, token: str
) -> list[tuple[str, grpc.StatusCode, Call]]:
    """(kind, the status it must end with, the call) in the order they rotate."""
    auth = (("authorization", f"Bearer {token}"),)

    async def stream(model: str) -> None:
        async for _ in stub.StreamChat(chat_request(model), metadata=auth, timeout=30):
            pass

    embed = embed_pb2.EmbedRequest(model="embed", inputs=["Typed contracts."])
    ok, bad = grpc.StatusCode.OK, grpc.StatusCode
    return [
        ("Chat mock", ok, lambda: stub.Chat(chat_request("mock"), metadata=auth, timeout=30)),
        ("Chat upstream", ok, lambda: stub.Chat(chat_request("gpt"), metadata=auth, timeout=30)),
        ("StreamChat upstream", ok, lambda: stream("gpt")),
        ("Chat mock", ok, lambda: stub.Chat(chat_request("mock"), metadata=auth, timeout=30)),
        ("StreamChat mock", ok, lambda: stream("mock")),
        ("Embed upstream", ok, lambda: stub.Embed(embed, metadata=auth, timeout=30)),
        ("Chat upstream", ok, lambda: stub.Chat(chat_request("gpt"), metadata=auth, timeout=30)),
        (
            "unknown model",
            bad.NOT_FOUND,
            lambda: stub.Chat(chat_request("no-such-model"), metadata=auth, timeout=30),
        ),
        ("no token", bad.UNAUTHENTICATED, lambda: stub.Chat(chat_request("mock"), timeout=30)),
        (
            "empty request",
            bad.INVALID_ARGUMENT,
            lambda: stub.Chat(chat_pb2.ChatRequest(model="mock"), metadata=auth, timeout=30),
        ),
    ]


async def _drive(stack: Stack, result: Soak) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway_port}") as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        calls = _calls(stub, stack.token)
        in_flight: set[asyncio.Task[None]] = set()

        async def one(kind: str, expected: grpc.StatusCode, call: Call) -> None:
            try:
                await call()
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            result.outcomes[f"{kind}: {code.name}"] += 1
            if code != expected:
                result.unexpected += 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while loop.time() - started < result.seconds:
            due = started + sent / result.rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            kind, expected, call = calls[sent % len(calls)]
            sent += 1
            if len(in_flight) >= MAX_IN_FLIGHT:
                result.skipped += 1
                continue
            task = loop.create_task(one(kind, expected, call))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)


def run(seconds: float = SECONDS, rate: float = RATE, sample: float = SAMPLE) -> Soak:
    result = Soak(seconds, rate)
    with tempfile.TemporaryDirectory() as folder:
        stack = SoakStack(Path(folder))
        try:
            stack.start()
            _sample_while_driving(stack, result, sample)
        finally:
            stack.stop()
    return result


def _sample_while_driving(stack: Stack, result: Soak, sample: float) -> None:
    stop = threading.Event()
    begun = time.monotonic()

    def sampler() -> None:
        while True:
            result.samples.append((time.monotonic() - begun, rss_mib(stack.gateway_pid)))
            if stop.wait(sample):
                return

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        uvloop.run(_drive(stack, result))
    finally:
        stop.set()
        thread.join()


def render(result: Soak) -> str:
    first, last = result.samples[0][1], result.samples[-1][1]
    peak = max(v for _, v in result.samples)
    outcomes = ", ".join(f"{name} {count:,}" for name, count in sorted(result.outcomes.items()))
    verdict = "under" if result.growth < 1.0 else "over"
    return "\n".join(
        [
            f"## Soak: {result.seconds / 60:.1f} minutes of mixed calls, {result.rate:g} a second",
            "",
            f"Gateway RSS sampled every {SAMPLE:g} s: {first:.0f} MiB at the start, "
            f"{peak:.0f} MiB at most, {last:.0f} MiB at the end. Growth over the second "
            f"half (least-squares slope): {result.growth:+.3f} MiB/min ({verdict} the "
            "1 MiB/min target).",
            "",
            f"Calls: {result.calls:,} ({result.unexpected} ended with another status than "
            f"expected; {result.skipped} not sent, over {MAX_IN_FLIGHT} in flight). "
            f"By kind and status: {outcomes}.",
            "",
            "RSS samples (s, MiB): " + ", ".join(f"{t:.0f} {v:.1f}" for t, v in result.samples),
            "",
        ]
    )


def main() -> int:
    result = run()
    report = render(result)
    print(report)
    out = Path(os.environ.get("SOAK_OUT", str(ROOT / "bench" / "soak.md")))
    out.write_text(report)
    return 0 if result.unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
