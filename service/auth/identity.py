"""The caller, as established by authentication.

A subject or tenant name means something only together with the issuer that vouched
for it: the `sub` "alice" of one issuer and the `sub` "alice" of another are different
callers. Everything that keeps state per caller (rate-limit buckets, budgets, cache
partitions) keys it by `scoped(issuer, name)`, never by the bare name.
"""

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
    key_id: str = ""  # the `kid` of the key that verified the token, for the audit
    token_id: str = ""  # the token's `jti`, for the audit

    @property
    def subject_key(self) -> str:
        """The subject, scoped by its issuer: the stem of per-subject state."""
        return scoped(self.issuer, self.subject)

    @property
    def tenant_key(self) -> str:
        """The tenant, scoped by its issuer ("" without a tenant)."""
        return scoped(self.issuer, self.tenant) if self.tenant else ""

    def has_scope(self, scope: str) -> bool:
        return not self.authenticated or scope in self.scopes

    def may_use(self, model: str) -> bool:
        if self.models is None:
            return True
        return any(matches(pattern, model) for pattern in self.models)


def scoped(issuer: str, name: str) -> str:
    """`issuer|name`, with "%" and "|" percent-encoded in both halves, so that no two
    (issuer, name) pairs give the same string."""
    return f"{_escape(issuer)}|{_escape(name)}"


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("|", "%7C")


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
