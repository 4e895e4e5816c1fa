"""Each section's checks live beside the code that uses the section and import only
service.config_base, so every module of the configuration loads on its own, in a fresh
interpreter, whichever is imported first (no import cycle through service.config)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = (
    "service.config",
    "service.config_base",
    "service.config_schema",
    "service.audit.config_checks",
    "service.auth.config_checks",
    "service.limits",
    "service.limits.config_checks",
    "service.limits.redis_store",
    "service.providers.config_checks",
    "service.routing.config_checks",
    "service.routing.model_checks",
    "service.server_config_checks",
    "service.shared_store.config_checks",
    "service.shared_store.connection",
    "service.tracing_config_checks",
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_and_alone(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_loader_reexports_the_shared_names() -> None:
    from service import config, config_base

    assert config.ConfigError is config_base.ConfigError
    assert config.seconds_or is config_base.seconds_or
