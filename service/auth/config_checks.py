"""Checks the `auth` section: issuers, their keys or secrets, exempt methods and the
per-issuer authorization (tenants, method scopes). Used by service/auth/verifier.py
and the authorization it feeds; called by the loader in service/config.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from llmgateway.config.v1 import config_pb2

from service.auth.algorithms import ASYMMETRIC, SYMMETRIC
from service.config_base import ConfigError, seconds_or

_FULL_METHOD = re.compile(r"^/[A-Za-z0-9_.]+/[A-Za-z0-9_]+$")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+/-]{0,126}")


def check_auth(auth: config_pb2.AuthConfig, environ: Mapping[str, str]) -> None:
    """Raises ConfigError at the first problem in `auth`; `environ` holds the secrets."""
    _validate_issuer_authorization(auth)
    if auth.disabled:
        return
    if not auth.issuers:
        raise ConfigError("auth", "configure at least one issuer, or set disabled: true")
    if seconds_or(auth, "leeway", 0.0) > 300 or seconds_or(auth, "leeway", 0.0) < 0:
        raise ConfigError("auth.leeway", "must be 0 to 300s")
    if auth.HasField("max_token_bytes") and not 256 <= auth.max_token_bytes <= 65536:
        raise ConfigError("auth.max_token_bytes", "must be 256 to 65536")
    for k, method in enumerate(auth.exempt_methods):
        if not _FULL_METHOD.match(method):
            raise ConfigError(
                f"auth.exempt_methods[{k}]", 'must be a full name "/pkg.Service/Method"'
            )
    for method in auth.authorization.method_scopes:
        if not _FULL_METHOD.match(method):
            raise ConfigError(
                f"auth.authorization.method_scopes.{method}",
                'keys are full names "/pkg.Service/Method"',
            )
    seen: set[str] = set()
    for index, issuer in enumerate(auth.issuers):
        path = f"auth.issuers[{index}]"
        if not issuer.issuer:
            raise ConfigError(f"{path}.issuer", "is required")
        if issuer.issuer in seen:
            raise ConfigError(f"{path}.issuer", f'"{issuer.issuer}" is configured twice')
        seen.add(issuer.issuer)
        if not issuer.audiences:
            raise ConfigError(f"{path}.audiences", "at least one audience is required")
        if issuer.required_typ and not _MEDIA_TYPE.fullmatch(issuer.required_typ):
            raise ConfigError(f"{path}.required_typ", 'must be a media type such as "at+jwt"')
        algorithms = set(issuer.algorithms)
        if not algorithms:
            raise ConfigError(f"{path}.algorithms", "at least one algorithm is required")
        unknown = algorithms - SYMMETRIC - ASYMMETRIC
        if unknown:
            raise ConfigError(f"{path}.algorithms", f"not supported: {', '.join(sorted(unknown))}")
        if algorithms & SYMMETRIC and algorithms & ASYMMETRIC:
            raise ConfigError(
                f"{path}.algorithms", "symmetric (HS*) and asymmetric algorithms cannot be mixed"
            )
        if algorithms <= SYMMETRIC:
            if not issuer.secret_env:
                raise ConfigError(f"{path}.secret_env", "is required with HS* algorithms")
            if not environ.get(issuer.secret_env):
                raise ConfigError(
                    f"{path}.secret_env", f"environment variable {issuer.secret_env} is not set"
                )
            if issuer.public_keys or issuer.jwks_url:
                raise ConfigError(path, "HS* issuers take a secret, not public keys")
            continue
        if issuer.secret_env:
            raise ConfigError(f"{path}.secret_env", "asymmetric issuers take public keys")
        if not issuer.public_keys and not issuer.jwks_url:
            raise ConfigError(path, "set public_keys or jwks_url")
        if issuer.jwks_url and not _secure_or_loopback(issuer.jwks_url):
            raise ConfigError(f"{path}.jwks_url", "must be https (http only on loopback)")


def _validate_issuer_authorization(auth: config_pb2.AuthConfig) -> None:
    issuers = {issuer.issuer for issuer in auth.issuers}
    for issuer, scoped in auth.authorization.issuers.items():
        path = f"auth.authorization.issuers.{issuer}"
        if auth.disabled or issuer not in issuers:
            raise ConfigError(
                path,
                "authentication is disabled: no token names a tenant"
                if auth.disabled
                else "is not one of auth.issuers (give the issuer's exact iss)",
            )
        for tenant in scoped.tenant_models:
            if not tenant:
                raise ConfigError(f"{path}.tenant_models", "tenant names must not be empty")


def _secure_or_loopback(url: str) -> bool:
    if url.startswith("https://"):
        return True
    host = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)[0]
    return url.startswith("http://") and host in ("127.0.0.1", "localhost", "[::1]")
