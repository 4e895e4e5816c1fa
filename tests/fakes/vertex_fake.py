"""Gemini on Vertex AI, faked on loopback: a Google OAuth token endpoint that grants
access tokens for a service account's signed JWT (the JWT bearer grant, RFC 7523), and
a Vertex AI endpoint that serves the Gemini fake's answers at Vertex URLs
(`/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:method`) to holders of a
granted, unexpired token. Key material is made here, never read from disk."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization

from tests.fakes.gemini_fake import GeminiFake, embedding_vector, error_response, html_error
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import KeyPair, rsa_pair

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_PATH = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)


@dataclass
class ServiceAccountKey:
    """A service account and its key, and the JSON key file Google would hand out."""

    client_email: str = "gateway@test-project.iam.gserviceaccount.com"
    pair: KeyPair = field(default_factory=lambda: rsa_pair("key-1"))

    def key_file(self, token_uri: str) -> str:
        pem = self.pair.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": self.pair.kid,
                "private_key": pem,
                "client_email": self.client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
            }
        )


class GoogleTokenEndpoint(FakeHttpServer):
    """POST /token: `{"access_token": "ya29.fake-N", "expires_in": ...}` for a valid
    assertion; Google's `invalid_grant` answer otherwise."""

    def __init__(self, account: ServiceAccountKey, expires_in: int = 3599) -> None:
        super().__init__(self._handle)
        self.account = account
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.refuse = False  # answer every request with invalid_grant

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def _invalid(self, description: str) -> FakeResponse:
        body = {"error": "invalid_grant", "error_description": description}
        return FakeResponse.json(body, 400)

    def _handle(self, request: FakeRequest) -> FakeResponse:
        if request.method != "POST" or request.path != "/token":
            return html_error(404)
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != GRANT_TYPE or "assertion" not in form:
            return FakeResponse.json({"error": "unsupported_grant_type"}, 400)
        if self.refuse:
            return self._invalid("Invalid JWT Signature.")
        try:
            header = jwt.get_unverified_header(form["assertion"])
            claims = jwt.decode(
                form["assertion"],
                self.account.pair.public,
                algorithms=["RS256"],
                audience=self.token_uri,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError:
            return self._invalid("Invalid JWT Signature.")
        if header.get("kid") != self.account.pair.kid:
            return self._invalid("Invalid JWT Signature.")
        if claims["iss"] != self.account.client_email or claims["scope"] != SCOPE:
            return self._invalid("Invalid JWT: Token must be a short-lived token")
        if not 0 < claims["exp"] - claims["iat"] <= 3600 or claims["iat"] > time.time() + 60:
            return self._invalid("Invalid JWT: Token must be a short-lived token")
        self.issued.append(f"ya29.fake-{len(self.issued) + 1}")
        return FakeResponse.json(
            {"access_token": self.issued[-1], "expires_in": self.expires_in, "token_type": "Bearer"}
        )


class VertexFake(GeminiFake):
    """Vertex AI's publisher models, answering as the Gemini fake does."""

    def __init__(
        self,
        tokens: GoogleTokenEndpoint,
        project: str = "test-project",
        location: str = "us-central1",
    ) -> None:
        super().__init__(api_key="", api_version="v1")
        self.tokens = tokens
        self.project = project
        self.location = location
        self.revoked: set[str] = set()

    def route(self, request: FakeRequest) -> tuple[str, str] | FakeResponse:
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return html_error(404)
        if "x-goog-api-key" in request.headers:
            return error_response(
                401,
                "UNAUTHENTICATED",
                "API keys are not supported by this API. Expected OAuth2 access token or other"
                " authentication credentials that assert a principal.",
            )
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens.issued or token in self.revoked:
            return error_response(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token,"
                " login cookie or other valid authentication credential.",
            )
        if match["project"] != self.project:
            return error_response(
                403,
                "PERMISSION_DENIED",
                f"Permission 'aiplatform.endpoints.predict' denied on resource"
                f" 'projects/{match['project']}/locations/{match['location']}' (or it may not exist).",
            )
        if match["location"] != self.location or match["version"] != self.api_version:
            return html_error(404)
        return match["model"], match["method"]

    def count_request(self, body: Any) -> Any:
        """Vertex AI's countTokens takes the generateContent fields at the top level."""
        if isinstance(body, dict) and "generateContentRequest" in body:
            return None
        return body

    def _embed(self, body: Any, model: str, method: str) -> FakeResponse:
        if method != "predict":
            return html_error(404)
        instances = body.get("instances") or []
        dimensions = int((body.get("parameters") or {}).get("outputDimensionality", 8))
        return FakeResponse.json(
            {
                "predictions": [
                    {
                        "embeddings": {
                            "values": embedding_vector(item["content"], dimensions),
                            "statistics": {
                                "token_count": len(item["content"].split()),
                                "truncated": False,
                            },
                        }
                    }
                    for item in instances
                ]
            }
        )
