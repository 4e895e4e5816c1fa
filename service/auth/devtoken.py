"""Development tokens: `python -m service token --sub alice` signs a token with the
first HS* issuer of the configuration, whose secret comes from the environment.
For development and tests only; production tokens come from the identity provider."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jwt
from llmgateway.config.v1 import config_pb2

from service.auth.algorithms import SYMMETRIC
from service.auth.verifier import DEFAULT_SCOPES
from service.config import ConfigError


def mint(
    auth: config_pb2.AuthConfig,
    environ: Mapping[str, str],
    subject: str,
    tenant: str = "",
    scopes: Sequence[str] = DEFAULT_SCOPES,
    models: Sequence[str] | None = None,
    ttl: float = 3600.0,
    now: float | None = None,
) -> str:
    issuer = next(
        (i for i in auth.issuers if i.algorithms and set(i.algorithms) <= SYMMETRIC), None
    )
    if issuer is None:
        raise ConfigError("auth.issuers", "no HS* issuer to sign a development token with")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "iss": issuer.issuer,
        "aud": issuer.audiences[0],
        "sub": subject,
        "iat": int(issued),
        "exp": int(issued + ttl),
        issuer.scope_claim or "scope": " ".join(scopes),
    }
    if tenant:
        claims[issuer.tenant_claim or "tenant"] = tenant
    if models is not None:
        claims[issuer.models_claim or "models"] = list(models)
    secret = environ.get(issuer.secret_env, "")
    return jwt.encode(claims, secret, algorithm=issuer.algorithms[0])
