from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings

from service.logs import JsonFormatter, guarded
from tests.support import Gateway, running_gateway

SECRETS_SCAN_MODULE = "test_zz_secrets_scan.py"

# Property tests judge results, never speed: hypothesis's per-example deadline (200 ms)
# fails them on a busy machine.
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrets scan runs after every other test (unit tests included), so that it
    reads every log the session wrote. A stable sort: the rest keeps its order."""
    items.sort(key=lambda item: item.path.name == SECRETS_SCAN_MODULE)


@pytest.fixture(scope="session", autouse=True)
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the test process (gateways served in-process included), at
    DEBUG, as the service's JSON lines with their extra fields, in a file under the
    session's base temp directory where the secrets scan reads it. Guarded as the
    service's own handler is (service.logs.guarded)."""
    directory = tmp_path_factory.getbasetemp() / "in-process-logs"
    directory.mkdir(exist_ok=True)
    path = directory / "session.log"
    handler = guarded(logging.FileHandler(path, encoding="utf-8"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def gateway() -> AsyncIterator[Gateway]:
    """One gateway for the tests that do not change its configuration."""
    async with running_gateway() as running:
        yield running
