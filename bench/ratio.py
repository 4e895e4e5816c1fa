"""The guard on the gateway's own cost: `make bench-check`, run by .ci/run (under a
minute).

Measures, in one run and interleaved, the bare grpc.aio echo server (the floor) and the
gateway (mock provider, and through the fast fake upstream) at 64 calls in flight, and
fails when the gateway's calls/s fall below a set share of the floor's, or when any of
its calls failed. A share rather than a rate, so that a slower or busier machine moves
both sides alike; the best of a few interleaved rounds, so that a burst of another
process's work in one round does not decide. The floors sit at about half of the shares
a loaded machine reaches, below every run measured (bench/results.md): a change that
doubles the gateway's cost per call brings the shares down to about the floors.
"""

from __future__ import annotations

import os
import sys

from bench.stack import Stack, Target, h2load, running_stack

# The least share of the echo server's calls/s each path must keep (best round).
FLOORS = {
    "gateway, mock provider": float(os.environ.get("BENCH_FLOOR_MOCK", "0.15")),
    "gateway → fake upstream": float(os.environ.get("BENCH_FLOOR_UPSTREAM", "0.12")),
}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
SECONDS = 2.0
IN_FLIGHT = 64


def shares(stack: Stack) -> tuple[dict[str, float], dict[str, float], int]:
    """(best share of the floor per path, best calls/s per path, failed gateway calls)."""
    paths: dict[str, Target] = {
        "echo server": stack.echo(),
        "gateway, mock provider": stack.gateway("mock"),
        "gateway → fake upstream": stack.gateway("gpt"),
    }
    for target in paths.values():
        h2load(target, in_flight=4, requests=300)
    stack.audit_failures()
    best: dict[str, float] = dict.fromkeys(FLOORS, 0.0)
    rates: dict[str, float] = dict.fromkeys(paths, 0.0)
    failed = 0
    for _ in range(ROUNDS):
        measured = {}
        for name, target in paths.items():
            load = h2load(target, in_flight=IN_FLIGHT, seconds=SECONDS)
            failed += load.failed
            measured[name] = load.rate
            rates[name] = max(rates[name], load.rate)
        for name in FLOORS:
            if measured["echo server"] > 0:
                best[name] = max(best[name], measured[name] / measured["echo server"])
    failed += stack.audit_failures()[1]
    return best, rates, failed


def main() -> int:
    with running_stack() as stack:
        best, rates, failed = shares(stack)
    ok = failed == 0
    print(f"calls/s at {IN_FLIGHT} in flight, best of {ROUNDS} interleaved rounds:")
    for name, rate in rates.items():
        print(f"  {name}: {rate:,.0f}")
    for name, floor in FLOORS.items():
        verdict = "ok" if best[name] >= floor else "TOO SLOW"
        ok = ok and best[name] >= floor
        print(f"  {name}: {best[name]:.1%} of the echo server (floor {floor:.0%}): {verdict}")
    if failed:
        print(f"  {failed} gateway calls failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
