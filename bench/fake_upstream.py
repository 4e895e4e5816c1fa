"""The OpenAI-compatible fake upstream of the tests, as a process of its own for the
benchmark: `python -m bench.fake_upstream PORT`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig

BENCH_KEY = "sk-bench"


async def main(port_file: str) -> None:
    async with FakeHttpServer(OpenAIFake(OpenAIFakeConfig(key=BENCH_KEY)).handle) as server:
        Path(port_file).write_text(str(server.port))  # noqa: ASYNC240 - once, at start
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
