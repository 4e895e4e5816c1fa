"""A user's own provider class, plugged in by import path without editing the service."""

from __future__ import annotations

import subprocess
from pathlib import Path

from llmgateway.v1 import chat_pb2, models_pb2

from tests.support import PYTHON, ROOT, chat_request, running_gateway

CONFIG = """
server: {host: 127.0.0.1, port: 0}
auth: {disabled: true}
providers:
  - name: inhouse
    custom:
      class_path: "tests.fakes.custom_provider:ShoutingProvider"
      settings: {suffix: "!!"}
models:
  - {alias: shout, provider: inhouse, upstream_model: shout-1}
"""


async def test_custom_provider_serves_chat_and_stream() -> None:
    async with running_gateway(CONFIG) as gateway:
        reply = await gateway.stub.Chat(chat_request("hello there", model="shout"), timeout=5)
        assert reply.message.parts[0].text == "HELLO THERE!!"
        assert reply.route.provider == "inhouse"
        chunks = [
            c async for c in gateway.stub.StreamChat(chat_request("hi", model="shout"), timeout=5)
        ]
        assert [c.text_delta for c in chunks] == ["HI!!", ""]
        assert chunks[0].finish_reason == chat_pb2.FINISH_REASON_STOP
        models = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        [info] = models.models
        assert info.provider_type == "shouting"
        assert (info.capabilities.streaming, info.capabilities.tools) == (True, False)


def test_bad_class_path_fails_at_start_with_the_field_path(tmp_path: Path) -> None:
    for class_path, problem in [
        ("tests.fakes.custom_provider:NotAProvider", "is not a subclass"),
        ("tests.fakes.no_such_module:Thing", "cannot import"),
    ]:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            CONFIG.replace("tests.fakes.custom_provider:ShoutingProvider", class_path)
        )
        result = subprocess.run(
            [PYTHON, "-m", "service", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert "providers[0].custom.class_path" in result.stderr and problem in result.stderr
