"""Chat and StreamChat through the real server and real channels."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from tests.support import Gateway, chat_request, details_of, user


async def test_chat_echoes_the_last_user_message(gateway: Gateway) -> None:
    response = await gateway.stub.Chat(chat_request("Hello there, gateway"), timeout=5)
    assert response.message.role == content_pb2.ROLE_ASSISTANT
    assert [p.text for p in response.message.parts] == ["Hello there, gateway"]
    assert response.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert response.raw_finish_reason == "stop"
    assert response.model == "mock"
    assert response.id.startswith("chat-")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 3)
    assert response.usage.total_tokens == 6
    assert response.route.provider == "mock"
    assert response.route.upstream_model == "mock-echo-1"
    assert response.route.attempts == 1
    assert not response.route.fallback_used
    assert not response.route.cache_hit


async def test_request_id_from_metadata_names_the_response(gateway: Gateway) -> None:
    response = await gateway.stub.Chat(
        chat_request(), metadata=(("x-request-id", "req-42"),), timeout=5
    )
    assert response.id == "chat-req-42"
    assert response.route.upstream_request_id == "mock-req-42"


async def test_stream_chat_chunk_order_finish_and_usage(gateway: Gateway) -> None:
    text = "one two three four five"
    chunks = [c async for c in gateway.stub.StreamChat(chat_request(text), timeout=5)]
    deltas = [c.text_delta for c in chunks]
    assert "".join(deltas) == text
    assert deltas[:5] == ["one", " two", " three", " four", " five"]
    finishes = [(i, c.finish_reason) for i, c in enumerate(chunks) if c.finish_reason]
    # Exactly one finish reason, on the last content chunk; usage only on the final chunk.
    assert finishes == [(4, chat_pb2.FINISH_REASON_STOP)]
    assert [i for i, c in enumerate(chunks) if c.HasField("usage")] == [len(chunks) - 1]
    assert chunks[-1].usage.output_tokens == 5
    assert chunks[-1].usage.input_tokens == 5
    assert chunks[-1].text_delta == ""
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].route.provider == "mock" and chunks[-1].route.attempts == 1
    assert not chunks[2].HasField("route")


async def test_scripted_replies_follow_the_conversation(gateway: Gateway) -> None:
    first = await gateway.stub.Chat(chat_request("hi", model="scripted"), timeout=5)
    assert first.message.parts[0].text == "First scripted reply."
    request = chat_pb2.ChatRequest(
        model="scripted",
        messages=[
            user("hi"),
            content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=[first.message.parts[0]]),
            user("and then?"),
        ],
    )
    second = await gateway.stub.Chat(request, timeout=5)
    assert second.message.parts[0].text == "Second scripted reply."


def _weather_tool() -> content_pb2.Tool:
    schema = struct_pb2.Struct()
    schema.update(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        }
    )
    return content_pb2.Tool(name="get_weather", description="Weather by city", parameters=schema)


async def test_tool_call_unary_and_streamed_agree(gateway: Gateway) -> None:
    request = chat_request("get_weather for Paris please", tools=[_weather_tool()])
    response = await gateway.stub.Chat(request, timeout=5)
    assert response.finish_reason == chat_pb2.FINISH_REASON_TOOL_CALLS
    calls = [p.tool_call for p in response.message.parts if p.WhichOneof("kind") == "tool_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id.startswith("call_")
    arguments = json.loads(calls[0].arguments)
    assert arguments == {"city": "get_weather for Paris please", "days": 4}

    chunks = [c async for c in gateway.stub.StreamChat(request, timeout=5)]
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert len(deltas) > 2, "arguments arrive in several fragments"
    assert deltas[0].id == calls[0].id and deltas[0].name == "get_weather"
    assert all(d.index == 0 and not d.id for d in deltas[1:])
    assert "".join(d.arguments_delta for d in deltas) == calls[0].arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == [
        chat_pb2.FINISH_REASON_TOOL_CALLS
    ]


async def test_tool_result_turn_and_forced_tool(gateway: Gateway) -> None:
    forced = chat_request(
        "anything",
        tools=[_weather_tool()],
        tool_choice=content_pb2.ToolChoice(tool_name="get_weather"),
    )
    call = (await gateway.stub.Chat(forced, timeout=5)).message.parts[0].tool_call
    follow_up = chat_pb2.ChatRequest(
        model="mock",
        tools=[_weather_tool()],
        messages=[
            user("weather?"),
            content_pb2.Message(
                role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(tool_call=call)]
            ),
            content_pb2.Message(
                role=content_pb2.ROLE_TOOL,
                parts=[
                    content_pb2.Part(
                        tool_result=content_pb2.ToolResult(tool_call_id=call.id, content='{"c":21}')
                    )
                ],
            ),
        ],
    )
    response = await gateway.stub.Chat(follow_up, timeout=5)
    assert response.message.parts[0].text == 'get_weather returned {"c":21}'
    assert response.finish_reason == chat_pb2.FINISH_REASON_STOP


async def test_json_schema_output(gateway: Gateway) -> None:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"answer": {"type": "string"}}})
    config = chat_pb2.GenerationConfig(
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="reply", json_schema=schema
        )
    )
    response = await gateway.stub.Chat(chat_request("yes", generation_config=config), timeout=5)
    assert json.loads(response.message.parts[0].text) == {"answer": "yes"}


async def test_max_output_tokens_gives_length(gateway: Gateway) -> None:
    config = chat_pb2.GenerationConfig(max_output_tokens=2)
    response = await gateway.stub.Chat(chat_request("a b c d", generation_config=config), timeout=5)
    assert response.message.parts[0].text == "a b"
    assert response.finish_reason == chat_pb2.FINISH_REASON_LENGTH
    chunks = [
        c
        async for c in gateway.stub.StreamChat(
            chat_request("a b c d", generation_config=config), timeout=5
        )
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == [chat_pb2.FINISH_REASON_LENGTH]


async def test_image_input_is_accepted_by_a_vision_model(gateway: Gateway) -> None:
    message = user("what is this?")
    message.parts.add(image=content_pb2.Image(data=b"\x89PNG\r\n", mime_type="image/png"))
    response = await gateway.stub.Chat(
        chat_pb2.ChatRequest(model="mock", messages=[message]), timeout=5
    )
    assert response.usage.input_tokens == 3 + 85


async def test_capabilities_are_enforced_before_any_call(gateway: Gateway) -> None:
    message = user("look")
    message.parts.add(image=content_pb2.Image(url="https://example.test/cat.png"))
    cases = [
        (chat_pb2.ChatRequest(model="plain", messages=[message]), "messages[0].parts[1].image"),
        (chat_request(model="plain", tools=[_weather_tool()]), "tools"),
        (
            chat_request(
                model="plain",
                generation_config=chat_pb2.GenerationConfig(
                    response_format=chat_pb2.ResponseFormat(
                        type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
                    )
                ),
            ),
            "generation_config.response_format",
        ),
        (chat_request(model="mock-embed"), "model"),
    ]
    before = (
        (await gateway.stub.GetProviderStats(_stats_request(), timeout=5)).providers[0].requests
    )
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(request, timeout=5)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.error_info.reason == "CAPABILITY_UNSUPPORTED"
        assert list(details.violations) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in gateway.stub.StreamChat(chat_request(model="plain"), timeout=5):
            pass
    assert details_of(caught.value).error_info.metadata["capability"] == "streaming"
    after = (await gateway.stub.GetProviderStats(_stats_request(), timeout=5)).providers[0].requests
    assert after == before, "refused requests never reach the provider"


def _stats_request() -> object:
    from llmgateway.v1 import models_pb2

    return models_pb2.GetProviderStatsRequest(provider="mock")


async def test_unknown_model_is_not_found(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(chat_request(model="gpt-nonexistent"), timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info.reason == "MODEL_NOT_FOUND"
    assert details.error_info.metadata["model"] == "gpt-nonexistent"
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in gateway.stub.StreamChat(chat_request(model="gpt-nonexistent"), timeout=5):
            pass
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_json_mapping_of_a_response_is_stable(gateway: Gateway) -> None:
    response = await gateway.stub.Chat(chat_request("x"), timeout=5)
    as_json = json_format.MessageToDict(response)
    assert as_json["finishReason"] == "FINISH_REASON_STOP"
    assert as_json["message"]["role"] == "ROLE_ASSISTANT"
