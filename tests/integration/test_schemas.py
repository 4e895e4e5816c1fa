"""JSON Schemas and tool names a caller sends are checked before any upstream call: a
schema the JSON Schema meta-schema refuses, or a tool name outside the providers' common
rule, is INVALID_ARGUMENT with the field path, and the upstream never hears of it.
Valid schemas still reach the upstream as they were sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.support import Gateway, chat_request, details_of, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - name: openai
    api_key_env: OPENAI_TEST_KEY
    base_url: {url}/v1
    openai: {{}}
models:
  - {{alias: gpt, provider: openai, upstream_model: gpt-4o-mini}}
"""


@dataclass
class World:
    gateway: Gateway
    upstream: FakeHttpServer


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world() -> AsyncIterator[World]:
    fake = OpenAIFake(OpenAIFakeConfig(key="sk-test"))
    async with FakeHttpServer(fake.handle) as upstream:
        config = CONFIG.format(url=upstream.url)
        async with running_gateway(config, environ={"OPENAI_TEST_KEY": "sk-test"}) as gateway:
            yield World(gateway, upstream)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def tool(name: str, parameters: dict[str, Any] | None = None) -> content_pb2.Tool:
    made = content_pb2.Tool(name=name, description="a tool")
    if parameters is not None:
        made.parameters.CopyFrom(struct(parameters))
    return made


def with_schema(schema: dict[str, Any]) -> chat_pb2.ChatRequest:
    return chat_request(
        model="gpt",
        generation_config=chat_pb2.GenerationConfig(
            response_format=chat_pb2.ResponseFormat(
                type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                schema_name="answer",
                json_schema=struct(schema),
            )
        ),
    )


GOOD_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 64, "pattern": "^[A-Z]"},
        "days": {"type": "integer", "minimum": 1},
        "units": {"enum": ["metric", "imperial"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}

BAD_CASES = [
    pytest.param(
        with_schema({"type": 12, "properties": "x"}),
        "generation_config.response_format.json_schema",
        "$.type",
        id="response-format-type-12",
    ),
    pytest.param(
        chat_request(model="gpt", tools=[tool("lookup", {"type": "not-a-type"})]),
        "tools[0].parameters",
        "'not-a-type' is not one of",
        id="tool-type-not-a-type",
    ),
    pytest.param(
        chat_request(
            model="gpt",
            tools=[tool("ok", GOOD_SCHEMA), tool("bad", {"properties": {"a": {"pattern": "("}}})],
        ),
        "tools[1].parameters",
        "$.properties.a.pattern",
        id="tool-bad-regex",
    ),
    pytest.param(
        chat_request(model="gpt", tools=[tool("lookup", {"required": "city"})]),
        "tools[0].parameters",
        "$.required",
        id="tool-required-not-a-list",
    ),
    pytest.param(
        chat_request(
            model="gpt",
            tools=[
                tool(
                    "lookup",
                    {
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "properties": {"n": {"minimum": "one"}},
                    },
                )
            ],
        ),
        "tools[0].parameters",
        "draft 7",
        id="draft-07-schema",
    ),
    pytest.param(
        chat_request(model="gpt", tools=[tool("get_weather\n", GOOD_SCHEMA)]),
        "tools[0].name",
        "letters, digits",
        id="tool-name-trailing-newline",
    ),
    pytest.param(
        chat_request(model="gpt", tools=[tool("x" * 65, GOOD_SCHEMA)]),
        "tools[0].name",
        "letters, digits",
        id="tool-name-too-long",
    ),
    pytest.param(
        chat_request(model="gpt", tools=[tool("get.weather", GOOD_SCHEMA)]),
        "tools[0].name",
        "letters, digits",
        id="tool-name-dot",
    ),
]


@pytest.mark.parametrize(("request_", "field", "says"), BAD_CASES)
async def test_bad_schemas_and_names_never_go_upstream(
    world: World, request_: chat_pb2.ChatRequest, field: str, says: str
) -> None:
    before = len(world.upstream.requests)
    for call in ("Chat", "StreamChat"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if call == "Chat":
                await world.gateway.stub.Chat(request_, timeout=5)
            else:
                async for _ in world.gateway.stub.StreamChat(request_, timeout=5):
                    pass
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, call
        assert details.error_info.reason == "INVALID_REQUEST"
        assert list(details.violations) == [field], call
        assert says in details.violations[field], details.violations[field]
    assert len(world.upstream.requests) == before, "nothing reached the upstream"


async def test_valid_schemas_are_sent_upstream_as_they_were(world: World) -> None:
    before = len(world.upstream.requests)
    request = with_schema(GOOD_SCHEMA)
    request.tools.append(tool("get_weather", GOOD_SCHEMA))
    request.tools.append(tool("no_parameters"))
    for _ in range(2):  # the second time, the verdicts are remembered
        reply = await world.gateway.stub.Chat(request, timeout=5)
        assert reply.route.provider == "openai"
    sent = world.upstream.requests[before:]
    assert len(sent) == 2
    body = json.loads(sent[-1].body)
    assert body["response_format"]["json_schema"]["schema"] == GOOD_SCHEMA
    assert body["tools"][0]["function"]["parameters"] == GOOD_SCHEMA
