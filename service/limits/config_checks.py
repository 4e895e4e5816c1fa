"""Checks the `limits` section: per-subject and per-tenant limits (also per issuer) and
their budgets (its Redis store: service/shared_store/config_checks.py). Used by
service/limits/limiter.py; called by the loader in service/config.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from google.protobuf import message
from llmgateway.config.v1 import config_pb2

from service.config_base import ConfigError


def check_limits(
    limits: config_pb2.LimitsConfig, auth: config_pb2.AuthConfig, environ: Mapping[str, str]
) -> None:
    """Raises ConfigError at the first problem in `limits`; issuers it names must be in
    `auth`. (`environ` is the shared store's, checked with it.)"""
    entries: list[tuple[str, config_pb2.LimitConfig]] = [
        ("limits.subject", limits.subject),
        ("limits.tenant", limits.tenant),
    ]
    scopes: list[tuple[str, message.Message]] = [("limits", limits)]
    issuers = {issuer.issuer for issuer in auth.issuers}
    for issuer, scoped in limits.issuers.items():
        path = f"limits.issuers.{issuer}"
        if auth.disabled or issuer not in issuers:
            raise ConfigError(
                path,
                "authentication is disabled: every caller is the anonymous subject"
                if auth.disabled
                else "is not one of auth.issuers (give the issuer's exact iss)",
            )
        scopes.append((path, scoped))
    for prefix, holder in scopes:
        for kind in ("subjects", "tenants"):
            for name, limit in getattr(holder, kind).items():
                if not name:
                    raise ConfigError(f"{prefix}.{kind}", "names must not be empty")
                entries.append((f"{prefix}.{kind}.{name}", limit))
    for path, limit in entries:
        if not math.isfinite(limit.budget_usd) or limit.budget_usd < 0:
            raise ConfigError(f"{path}.budget_usd", "must be a positive amount (or 0 for none)")
