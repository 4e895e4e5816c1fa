"""Verifies bearer tokens (JWT) against the configured issuers and yields an Identity.

Strict by construction: the accepted algorithms come from the issuer's configuration,
never from the token; symmetric and asymmetric keys never serve one issuer; keys are
never fetched from a URL named in the token (`jku`, `x5u`, `jwk`, `x5c` are refused);
`crit` headers are refused; `exp`, `sub`, `iss` and `aud` (plus configured claims) are
required; the issuer must match exactly; an issuer with `required_typ` accepts only
tokens whose `typ` header says so (RFC 8725 §3.11: an ID token with the right audience
is not an access token). Every refusal carries a precise reason for the audit log;
callers only ever see a generic UNAUTHENTICATED.

A verified token is remembered for a minute at most, and never longer than the key that
verified it: a token whose key a JWKS fetch no longer lists (or lists changed) is
checked again on its next call, and so refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from llmgateway.config.v1 import config_pb2

from service.auth.algorithms import SYMMETRIC
from service.auth.identity import Identity
from service.auth.jwks import JwksCache
from service.config import ConfigError, seconds_or

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
VERIFIED_TTL = 60.0  # seconds a verified token is trusted without checking it again
VERIFIED_MAX = 10_000  # verified tokens kept, least recently used dropped first
DEFAULT_SCOPES = ("chat", "embed", "models:read", "stats:read")


class AuthFailure(Exception):
    """A refused credential; `reason` is for the audit log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    """The key a token was verified with, and where it came from."""

    material: Any = field(repr=False)  # what jwt.decode takes (an HS* secret, too)
    jwks: JwksCache | None = None  # the set it was published in, for JWKS keys
    kid: str = ""
    published: jwt.PyJWK | None = None

    def still_published(self) -> bool:
        """False once the JWKS no longer lists this key under its kid."""
        return self.jwks is None or self.jwks.current(self.kid) is self.published


@dataclass(frozen=True)
class _Verified:
    identity: Identity
    until: float  # Unix time
    key: _Key


@dataclass
class _Issuer:
    config: config_pb2.IssuerConfig
    algorithms: list[str]
    secret: bytes | None
    pem_keys: dict[str, Any]  # kid ("" = no kid) → public key object
    jwks: JwksCache | None


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise AuthFailure("malformed token") from exc


class TokenVerifier:
    def __init__(
        self,
        config: config_pb2.AuthConfig,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.leeway = seconds_or(config, "leeway", 30.0)
        self.max_token_bytes = (
            config.max_token_bytes if config.HasField("max_token_bytes") else 8192
        )
        self.required = ["exp", "sub", "iss", "aud", *config.required_claims]
        self._issuers: dict[str, _Issuer] = {}
        for index, issuer in enumerate(config.issuers):
            path = f"auth.issuers[{index}]"
            self._issuers[issuer.issuer] = _load_issuer(issuer, environ, clock, path)
        self._wall_clock = wall_clock
        # Tokens already verified → identity, Unix time until which that holds, and the
        # key relied on. A client sends the same token with every call; checking it
        # once per minute saves a signature check per call. Never past the token's own
        # expiry, nor past its key's removal from the JWKS.
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self.cache_hits = 0

    async def start(self) -> None:
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.start()

    async def close(self) -> None:
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.close()

    def _bearer(self, metadata: Sequence[tuple[str, str | bytes]]) -> str:
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            raise AuthFailure("no authorization metadata")
        if len(values) > 1:
            raise AuthFailure("more than one authorization entry")
        value = values[0]
        if not isinstance(value, str):
            raise AuthFailure("binary authorization metadata")
        if len(value) > self.max_token_bytes:
            raise AuthFailure("token larger than the configured maximum")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthFailure("authorization scheme is not Bearer")
        token = token.strip()
        if not token or " " in token:
            raise AuthFailure("empty or malformed bearer token")
        return token

    async def verify(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        token = self._bearer(metadata)
        digest = hashlib.sha256(token.encode()).digest()  # bounded memory per entry
        known = self._verified.get(digest)
        if known is not None:
            if self._wall_clock() < known.until and known.key.still_published():
                self._verified.move_to_end(digest)
                self.cache_hits += 1
                return known.identity
            del self._verified[digest]
        identity, expires, key = await self._verify(token)
        until = min(expires + self.leeway, self._wall_clock() + VERIFIED_TTL)
        self._verified[digest] = _Verified(identity, until, key)
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float, _Key]:
        """The identity a token proves, its expiry (Unix time) and the key that verified
        it, or AuthFailure."""
        segments = token.split(".")
        if len(segments) != 3 or not all(segments[:2]):
            raise AuthFailure("malformed token")
        header = _b64_json(segments[0])
        payload = _b64_json(segments[1])
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise AuthFailure("malformed token")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise AuthFailure(f"forbidden token header {name}")
        claimed_issuer = payload.get("iss")
        issuer = self._issuers.get(claimed_issuer) if isinstance(claimed_issuer, str) else None
        if issuer is None:
            raise AuthFailure("unknown issuer")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in issuer.algorithms:
            raise AuthFailure(f"algorithm {str(algorithm)[:16]!r} not allowed for this issuer")
        key = await self._key(issuer, header)
        try:
            claims = jwt.decode(
                token,
                key.material,
                algorithms=issuer.algorithms,
                audience=list(issuer.config.audiences),
                issuer=issuer.config.issuer,
                leeway=self.leeway,
                options={"require": self.required, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthFailure("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthFailure("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthFailure("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthFailure("wrong issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"missing claim {exc.claim}") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthFailure("bad signature") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AuthFailure("algorithm not allowed") from exc
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"invalid token ({type(exc).__name__})") from exc
        _check_typ(issuer.config.required_typ, header.get("typ"))
        identity = self._identity(issuer, claims, header)
        return identity, float(claims["exp"]), key

    async def _key(self, issuer: _Issuer, header: Mapping[str, Any]) -> _Key:
        if issuer.secret is not None:
            return _Key(issuer.secret)
        kid = header.get("kid", "")
        if not isinstance(kid, str) or len(kid) > 256:
            raise AuthFailure("malformed kid")
        if kid in issuer.pem_keys:
            return _Key(issuer.pem_keys[kid])
        if kid and issuer.jwks is not None:
            found = await issuer.jwks.key(kid)
            if found is not None:
                return _Key(found.key, issuer.jwks, kid, found)
        raise AuthFailure("unknown kid")

    def _identity(
        self, issuer: _Issuer, claims: Mapping[str, Any], header: Mapping[str, Any]
    ) -> Identity:
        config = issuer.config
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthFailure("empty subject")
        tenant = claims.get(config.tenant_claim or "tenant", "")
        tenant = tenant if isinstance(tenant, str) else ""
        raw_scopes = claims.get(config.scope_claim or "scope", "")
        if isinstance(raw_scopes, str):
            scopes = frozenset(raw_scopes.split())
        elif isinstance(raw_scopes, list):
            scopes = frozenset(s for s in raw_scopes if isinstance(s, str))
        else:
            scopes = frozenset()
        models = self._models(claims.get(config.models_claim or "models"), tenant, config.issuer)
        kid = header.get("kid", "")
        jti = claims.get("jti", "")
        return Identity(
            subject=subject,
            tenant=tenant,
            issuer=config.issuer,
            scopes=scopes,
            models=models,
            key_id=kid if isinstance(kid, str) else "",
            token_id=jti if isinstance(jti, str) else "",
        )

    def _models(self, claim: Any, tenant: str, issuer: str) -> tuple[str, ...] | None:
        """The token's models claim, else its issuer's allowance for the tenant, else
        the bare tenant name's, else the default (None: every model)."""
        authorization = self.config.authorization
        scoped = (
            authorization.issuers[issuer].tenant_models if issuer in authorization.issuers else None
        )
        if isinstance(claim, list):
            patterns = tuple(p for p in claim if isinstance(p, str))
        elif tenant and scoped is not None and tenant in scoped:
            patterns = tuple(scoped[tenant].patterns)
        elif tenant and tenant in authorization.tenant_models:
            patterns = tuple(authorization.tenant_models[tenant].patterns)
        elif authorization.default_models:
            patterns = tuple(authorization.default_models)
        else:
            return None
        return None if "*" in patterns else patterns


def media_type(value: object) -> str:
    """A `typ` value as compared (RFC 7515 §4.1.9): case-insensitive, and "at+jwt"
    the same as "application/at+jwt"; "" for a missing or non-string value."""
    if not isinstance(value, str):
        return ""
    return value.strip().lower().removeprefix("application/")


def _check_typ(required: str, typ: object) -> None:
    if required and media_type(typ) != media_type(required):
        shown = str(typ)[:32] if typ is not None else "none"
        raise AuthFailure(f"token typ {shown!r} is not the required {required!r}")


def _load_issuer(
    config: config_pb2.IssuerConfig,
    environ: Mapping[str, str],
    clock: Callable[[], float],
    path: str,
) -> _Issuer:
    algorithms = list(config.algorithms)
    secret = None
    if set(algorithms) <= SYMMETRIC:
        secret = environ.get(config.secret_env, "").encode()
        if len(secret) < 32:
            raise ConfigError(
                f"{path}.secret_env", f"{config.secret_env} must hold at least 32 bytes"
            )
        return _Issuer(config, algorithms, secret, {}, None)
    pem_keys: dict[str, Any] = {}
    for k, key in enumerate(config.public_keys):
        try:
            pem_keys[key.kid] = load_pem_public_key(Path(key.pem_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}.public_keys[{k}].pem_file", f"cannot load a PEM public key: {exc}"
            ) from exc
    jwks = None
    if config.jwks_url:
        jwks = JwksCache(
            config.jwks_url,
            refresh=seconds_or(config, "jwks_refresh", 300.0),
            min_refetch=seconds_or(config, "jwks_min_refetch", 30.0),
            clock=clock,
        )
    return _Issuer(config, algorithms, None, pem_keys, jwks)
