"""Where the gateway's time goes under load: `make profile` (py-spy, from PyPI).

Starts the benchmark's processes (bench/stack.py), drives one path at a time with h2load
at 64 calls in flight and samples the gateway with py-spy meanwhile: Chat with the mock
provider, Chat through the fast fake upstream, StreamChat through the fake upstream.
For each it prints the frames with the largest share of the samples, inclusive (the
frame is anywhere on the stack) and self (the frame is the innermost one), and keeps the
collapsed stacks (PROFILE_DIR, default a temporary folder) for a flame graph
(`py-spy`'s own format: one stack per line, `frame;frame;... count`).

PROFILE_SECONDS (default 10) sets how long each path is sampled; PROFILE_NATIVE=1 adds
native frames (grpc's C core, uvloop).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.stack import Stack, Target, h2load, running_stack

SECONDS = float(os.environ.get("PROFILE_SECONDS", "10"))
RATE = int(os.environ.get("PROFILE_RATE", "500"))
NATIVE = os.environ.get("PROFILE_NATIVE", "") == "1"
TOP = int(os.environ.get("PROFILE_TOP", "25"))
IN_FLIGHT = 64


def read_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """Collapsed stacks (`a;b;c 12`, outermost frame first) as (frames, samples)."""
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def _name(frame: str) -> str:
    """`function (path/to/file.py:12)` as `function (file.py)`: every line of a function
    counted together."""
    function, _, where = frame.partition(" (")
    if not where:
        return function
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{function} ({short})"


def shares(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    """(all samples, inclusive samples per function, self samples per function)."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        total += count
        names = [_name(frame) for frame in frames]
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    return total, inclusive, own


def report(title: str, stacks: list[tuple[list[str], int]]) -> str:
    total, inclusive, own = shares(stacks)
    if not total:
        return f"## {title}\n\nno samples\n"
    lines = [f"## {title} ({total} samples)", "", "inclusive:"]
    for name, count in inclusive.most_common(TOP):
        lines.append(f"  {count / total:6.1%}  {name}")
    lines += ["", "self:"]
    for name, count in own.most_common(TOP):
        lines.append(f"  {count / total:6.1%}  {name}")
    return "\n".join(lines) + "\n"


def sample(stack: Stack, target: Target, out: Path) -> list[tuple[list[str], int]]:
    """Samples the gateway with py-spy while h2load drives `target`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    h2load(target, in_flight=4, requests=300)  # warm
    args = [
        py_spy,
        "record",
        "--pid",
        str(stack.gateway_pid),
        "--rate",
        str(RATE),
        "--duration",
        str(round(SECONDS)),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    # Native frames need the process stopped while it is sampled; without them py-spy
    # reads it as it runs.
    args.append("--native" if NATIVE else "--nonblocking")
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load = threading.Thread(
        target=lambda: h2load(target, in_flight=IN_FLIGHT, seconds=SECONDS + 2, warm_up=0.5)
    )
    load.start()
    _, err = spy.communicate(timeout=SECONDS + 60)
    load.join()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
    return read_collapsed(out.read_text().splitlines())


def main() -> int:
    folder = Path(os.environ.get("PROFILE_DIR") or tempfile.mkdtemp(prefix="gateway-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    with running_stack() as stack:
        paths = {
            "Chat, mock provider": ("chat-mock", stack.gateway("mock")),
            "Chat through the fake upstream": ("chat-upstream", stack.gateway("gpt")),
            "StreamChat through the fake upstream": (
                "stream-upstream",
                stack.gateway("gpt", stream=True),
            ),
        }
        for title, (name, target) in paths.items():
            stacks = sample(stack, target, folder / f"{name}.txt")
            print(report(title, stacks))
    print(f"collapsed stacks in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
