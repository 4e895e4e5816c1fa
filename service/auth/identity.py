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
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


ANONYMOUS = Identity(subject="anonymous", authenticated=False)
