"""Azure OpenAI: the OpenAI transforms with deployment URLs, api-version and Azure auth.

Classic URLs name the deployment in the path and carry `api-version`; the v1 API
(`/openai/v1/`) takes the deployment name as the body's model (reference §3.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from llmgateway.config.v1 import config_pb2

from service.providers import factory, model_names
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.entra import DEFAULT_AUTHORITY, DEFAULT_SCOPE, EntraTokenSource
from service.providers.openai import OpenAIDialect

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIDialect(OpenAIDialect):
    kind = "azure_openai"
    request_id_header = "apim-request-id"
    # File inputs depend on the deployment's model and API version: opted into per alias.
    default_capabilities = Capabilities(vision=True)

    def __init__(self, provider: str, api_version: str, v1_api: bool) -> None:
        super().__init__(provider)
        self.api_version = api_version
        self.v1_api = v1_api

    def _path(self, deployment: Deployment, operation: str) -> str:
        if self.v1_api:
            return f"openai/v1/{operation}"
        # One encoded segment: no deployment name can reach another path (the registry
        # has already refused names outside the Azure rule of model_names.py).
        name = model_names.path_segment(deployment.upstream_model)
        version = quote(self.api_version, safe="")
        return f"openai/deployments/{name}/{operation}?api-version={version}"

    def chat_path(self, deployment: Deployment) -> str:
        return self._path(deployment, "chat/completions")

    def embeddings_path(self, deployment: Deployment) -> str:
        return self._path(deployment, "embeddings")


def create_azure(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    settings = config.azure_openai
    key = factory.api_key(config, environ)
    dialect = AzureOpenAIDialect(
        config.name, settings.api_version or DEFAULT_API_VERSION, settings.v1_api
    )
    if settings.HasField("entra_client_credentials"):
        credentials = settings.entra_client_credentials
        authority = (credentials.authority or DEFAULT_AUTHORITY).rstrip("/")
        tokens = EntraTokenSource(
            config.name,
            f"{authority}/{quote(credentials.tenant_id, safe='')}/oauth2/v2.0/token",
            credentials.client_id,
            key,  # the client secret
            credentials.scope or DEFAULT_SCOPE,
        )
        return factory.http_provider(config, dialect, config.base_url, {}, tokens)
    headers = {"authorization": f"Bearer {key}"} if settings.entra_token else {"api-key": key}
    return factory.http_provider(config, dialect, config.base_url, headers)
