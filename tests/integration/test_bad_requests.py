"""Invalid requests get INVALID_ARGUMENT with every field violation, and the service
stays healthy."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

from tests.support import Gateway, chat_request, details_of, user


async def _violations(gateway: Gateway, request: chat_pb2.ChatRequest) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(request, timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info.reason == "INVALID_REQUEST"
    first_field = details.bad_request.field_violations[0].field  # type: ignore[union-attr]
    assert details.message.startswith(first_field + ": ")
    return details.violations


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (chat_pb2.ChatRequest(messages=[user("hi")]), "model"),
        (chat_pb2.ChatRequest(model="mock"), "messages"),
        (
            chat_pb2.ChatRequest(
                model="mock",
                messages=[content_pb2.Message(parts=[content_pb2.Part(text="hi")])],
            ),
            "messages[0].role",
        ),
        (
            chat_pb2.ChatRequest(
                model="mock",
                messages=[content_pb2.Message(role=42, parts=[content_pb2.Part(text="hi")])],  # type: ignore[arg-type]
            ),
            "messages[0].role",
        ),
        (
            chat_pb2.ChatRequest(
                model="mock", messages=[content_pb2.Message(role=content_pb2.ROLE_USER)]
            ),
            "messages[0].parts",
        ),
        (
            chat_pb2.ChatRequest(
                model="mock",
                messages=[
                    content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part()])
                ],
            ),
            "messages[0].parts[0]",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(max_output_tokens=-5)),
            "generation_config.max_output_tokens",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(max_output_tokens=0)),
            "generation_config.max_output_tokens",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(temperature=2.5)),
            "generation_config.temperature",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(temperature=float("nan"))),
            "generation_config.temperature",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(top_p=0)),
            "generation_config.top_p",
        ),
        (
            chat_request(generation_config=chat_pb2.GenerationConfig(stop_sequences=[""])),
            "generation_config.stop_sequences[0]",
        ),
        (
            chat_request(
                generation_config=chat_pb2.GenerationConfig(
                    response_format=chat_pb2.ResponseFormat(
                        type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema_name="s"
                    )
                )
            ),
            "generation_config.response_format.json_schema",
        ),
        (chat_request(tools=[content_pb2.Tool(name="bad name!")]), "tools[0].name"),
        (
            chat_request(tool_choice=content_pb2.ToolChoice(tool_name="missing")),
            "tool_choice.tool_name",
        ),
        (
            chat_request(
                tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED)
            ),
            "tool_choice.mode",
        ),
        (chat_request(labels={str(i): "v" for i in range(17)}), "labels"),
    ],
)
async def test_invalid_field_is_named(
    gateway: Gateway, request_: chat_pb2.ChatRequest, field: str
) -> None:
    assert field in await _violations(gateway, request_)


async def test_every_violation_is_reported_at_once(gateway: Gateway) -> None:
    image_user = content_pb2.Message(
        role=content_pb2.ROLE_USER,
        parts=[content_pb2.Part(image=content_pb2.Image(data=b"x", mime_type="text/plain"))],
    )
    system_with_image = content_pb2.Message(
        role=content_pb2.ROLE_SYSTEM,
        parts=[content_pb2.Part(image=content_pb2.Image(url="ftp://x/y.png"))],
    )
    request = chat_pb2.ChatRequest(
        model="",
        messages=[image_user, system_with_image],
        generation_config=chat_pb2.GenerationConfig(top_k=0, presence_penalty=3),
    )
    violations = await _violations(gateway, request)
    assert set(violations) == {
        "model",
        "messages[0].parts[0].image.mime_type",
        "messages[1].parts[0].image",
        "messages[1].parts[0].image.url",
        "generation_config.top_k",
        "generation_config.presence_penalty",
    }
    assert "ROLE_SYSTEM" in violations["messages[1].parts[0].image"]


async def test_stream_chat_validates_too(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in gateway.stub.StreamChat(chat_pb2.ChatRequest(model="mock"), timeout=5):
            pass
    assert details_of(caught.value).violations.keys() == {"messages"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (embed_pb2.EmbedRequest(inputs=["a"]), "model"),
        (embed_pb2.EmbedRequest(model="mock-embed"), "inputs"),
        (embed_pb2.EmbedRequest(model="mock-embed", inputs=["a", ""]), "inputs[1]"),
        (embed_pb2.EmbedRequest(model="mock-embed", inputs=["a"], dimensions=0), "dimensions"),
    ],
)
async def test_invalid_embed_requests(
    gateway: Gateway, request_: embed_pb2.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Embed(request_, timeout=5)
    assert field in details_of(caught.value).violations


async def test_garbage_bytes_are_rejected_and_service_stays_healthy(gateway: Gateway) -> None:
    raw = gateway.channel.unary_unary(
        "/llmgateway.v1.ProviderService/Chat",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff\x0f", timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info.reason == "MALFORMED_REQUEST"
    assert details.violations == {"request": "could not be decoded"}
    health = health_pb2_grpc.HealthStub(gateway.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await gateway.stub.Chat(chat_request("still fine"), timeout=5)).message.parts[
        0
    ].text == "still fine"


async def test_oversized_message_is_refused(gateway: Gateway) -> None:
    huge = chat_request("x" * (17 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Chat(huge, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


HOSTILE_MODEL = "evil\r\nINFO forged line\x00" + "m" * 10_000


def _safe(text: str, bound: int) -> None:
    assert not any(c in text for c in "\r\n\x00"), repr(text[:200])
    assert len(text) <= bound, len(text)


async def test_a_hostile_model_name_is_not_found_without_controls_or_length(
    gateway: Gateway,
) -> None:
    for call in (gateway.stub.Chat, gateway.stub.Embed):
        request = (
            chat_request(model=HOSTILE_MODEL)
            if call is gateway.stub.Chat
            else embed_pb2.EmbedRequest(model=HOSTILE_MODEL, inputs=["hi"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=5)  # type: ignore[operator]
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
        )
        assert details.message.startswith('model "evil\\r\\nINFO forged line\\x00mmm')
        _safe(details.message, 256)
        _safe(details.error_info.metadata["model"], 128)


async def test_a_hostile_label_key_is_named_without_controls_or_length(
    gateway: Gateway,
) -> None:
    violations = await _violations(gateway, chat_request(labels={"k\r\n" + "k" * 10_000: "v"}))
    [field] = violations
    _safe(field, 160)
    assert field.startswith("labels['k\\\\r\\\\nkkk")
