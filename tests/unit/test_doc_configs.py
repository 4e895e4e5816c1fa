"""Every YAML example in the README and docs is configuration the gateway accepts as
written: field names, value types, durations and enum names, checked with the loader's
own structural checks (examples may leave out what a whole file would need)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2

from service.config import _Loader
from service.config_schema import check_message

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)):
            found.append((f"{path.name}#{index}", block))
    return found


@pytest.mark.parametrize(("where", "block"), examples(), ids=[w for w, _ in examples()])
def test_every_yaml_example_is_valid_configuration(where: str, block: str) -> None:
    data = yaml.load(block, Loader=_Loader)
    if isinstance(data, list):  # a list of providers
        for item in data:
            message = config_pb2.ProviderConfig()
            check_message(item, message.DESCRIPTOR, "providers[]")
            json_format.ParseDict(item, message)
    else:
        message = config_pb2.GatewayConfig()
        check_message(data, message.DESCRIPTOR, "")
        json_format.ParseDict(data, message)


def test_there_are_examples_to_check() -> None:
    assert len(examples()) >= 8
