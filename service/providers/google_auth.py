"""Google OAuth 2.0 access tokens for a service account (Vertex AI), by the JWT bearer
grant (RFC 7523): an RS256 assertion signed with the account's private key, posted to
the key file's `token_uri` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`.
Fetched, renewed before expiry and remembered as token_renewal.py describes. The private
key, the assertions and the tokens are never logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from service.config_base import ConfigError
from service.providers.token_renewal import RenewingTokenSource

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ASSERTION_LIFETIME = 3600  # seconds; Google's maximum


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service account's JSON key file that sign token requests."""

    client_email: str
    private_key: str = ""  # PEM; never logged
    private_key_id: str = ""
    token_uri: str = "https://oauth2.googleapis.com/token"


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def service_account(text: str, where: str) -> ServiceAccount:
    """Reads a JSON key file's text; ConfigError at `where` when it is not a usable
    service account key (the error never quotes the file)."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise ConfigError(where, "the key file is not JSON") from None
    if not isinstance(data, dict) or data.get("type") != "service_account":
        raise ConfigError(where, 'the key file is not a service account key ("type")')
    for name in ("client_email", "private_key", "token_uri"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ConfigError(where, f"the key file has no {name}")
    token_uri = data["token_uri"]
    if not (token_uri.startswith("https://") or _loopback_http(token_uri)):
        # The signed assertion goes there: plain HTTP only to this machine itself.
        raise ConfigError(where, "the key file's token_uri must be an https URL")
    try:
        jwt.encode({}, data["private_key"], algorithm="RS256")
    except Exception:
        raise ConfigError(where, "the key file's private_key is not an RSA private key") from None
    return ServiceAccount(
        client_email=data["client_email"],
        private_key=data["private_key"],
        private_key_id=str(data.get("private_key_id") or ""),
        token_uri=token_uri,
    )


def assertion(account: ServiceAccount, now: float, scope: str = CLOUD_PLATFORM_SCOPE) -> str:
    """The signed JWT that asks `token_uri` for an access token."""
    issued = int(now)
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


class ServiceAccountTokenSource(RenewingTokenSource):
    issuer = "Google OAuth"

    def __init__(
        self,
        provider: str,
        account: ServiceAccount,
        scope: str = CLOUD_PLATFORM_SCOPE,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(provider, account.token_uri, clock)
        self._account = account
        self._scope = scope
        self._wall_clock = wall_clock

    def form(self) -> Mapping[str, str]:
        return {
            "grant_type": GRANT_TYPE,
            "assertion": assertion(self._account, self._wall_clock(), self._scope),
        }
