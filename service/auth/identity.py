"""The caller, as established by authentication."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    subject: str
    tenant: str = ""
    issuer: str = ""
    scopes: frozenset[str] = frozenset()
    # Glob patterns of model aliases this caller may use; None: every model.
    models: tuple[str, ...] | None = None
    authenticated: bool = True

    def has_scope(self, scope: str) -> bool:
        return not self.authenticated or scope in self.scopes

    def may_use(self, model: str) -> bool:
        if self.models is None:
            return True
        return any(matches(pattern, model) for pattern in self.models)


def matches(pattern: str, model: str) -> bool:
    """Glob match where wildcards never cross a "/": "mock-*" allows the alias
    "mock-small" but not the direct name "mock-premium/any-model", which needs a
    pattern such as "mock-premium/*". "*" alone allows everything."""
    if pattern == "*":
        return True
    names = model.split("/")
    patterns = pattern.split("/")
    return len(names) == len(patterns) and all(
        fnmatch.fnmatchcase(name, part) for name, part in zip(names, patterns, strict=True)
    )


ANONYMOUS = Identity(subject="anonymous", authenticated=False)
