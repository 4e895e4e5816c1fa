"""Loads a provider class of the user's own from an import path in the configuration.

    providers:
      - name: inhouse
        custom:
          class_path: "mycompany.llm:InhouseProvider"
          settings: {endpoint: "http://10.0.0.5:9000", flavour: fast}

The class must subclass service.providers.base.Provider and is constructed as
`InhouseProvider(name, settings, provider_config)`, where `settings` is a plain dict
and `provider_config` the whole ProviderConfig (timeouts, pool, api_key_env, ...). See
docs/custom-providers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2

from service.config import ConfigError
from service.providers.base import Provider


def load_class(class_path: str) -> type[Provider]:
    module_name, _, class_name = class_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("custom.class_path", f"cannot import {module_name}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Provider):
        raise ConfigError(
            "custom.class_path",
            f"{class_path} is not a subclass of service.providers.base.Provider",
        )
    return cls


def create_custom(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    cls = load_class(config.custom.class_path)
    settings: dict[str, Any] = json_format.MessageToDict(config.custom.settings)
    provider = cls(config.name, settings, config)  # type: ignore[call-arg]
    if not provider.kind:
        provider.kind = "custom"
    return provider
