"""Microsoft Entra ID access tokens for Azure OpenAI, by the OAuth 2.0 client
credentials flow; fetched, renewed and remembered as token_renewal.py describes. The
client secret and the tokens are never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from service.providers.token_renewal import RenewingTokenSource

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"


class EntraTokenSource(RenewingTokenSource):
    issuer = "Microsoft Entra ID"

    def __init__(
        self,
        provider: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = DEFAULT_SCOPE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(provider, token_url, clock)
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scope,
        }

    def form(self) -> Mapping[str, str]:
        return self._form
