from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support import Gateway, running_gateway


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def gateway() -> AsyncIterator[Gateway]:
    """One gateway for the tests that do not change its configuration."""
    async with running_gateway() as running:
        yield running
