"""What every configuration check shares: `ConfigError` and `seconds_or`.

This module imports nothing from the gateway, so the loader (service/config.py) and
the section checks beside each package (`service/*/config_checks.py`) can all import
it without an import cycle. Code inside a section's package that the package's
`__init__` imports (service/limits/redis_store.py) takes these names from here rather
than from service.config, which is still loading when it runs.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message


class ConfigError(Exception):
    """A configuration problem at one field path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def seconds_or(holder: message.Message, field: str, default: float) -> float:
    """The Duration field `field` of `holder` in seconds, or `default` when unset."""
    if holder.HasField(field):
        return _seconds(getattr(holder, field))
    return default
