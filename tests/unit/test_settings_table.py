"""The per-kind table of request settings (service/providers/unsupported.py): it covers
every field of ChatRequest, agrees with docs/providers.md and with what each kind's
transform really sends, and the router's check refuses or drops by it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import GatewayError
from service.providers import provider_options, unsupported
from service.providers.anthropic import AnthropicDialect
from service.providers.azure import AzureOpenAIDialect
from service.providers.base import Capabilities, Deployment
from service.providers.dialect import Dialect
from service.providers.gemini import GeminiDialect
from service.providers.ollama import OllamaDialect
from service.providers.openai import CompatibleDialect, OpenAIDialect, OpenAIOptions
from service.routing.capabilities import as_sent, check_chat
from service.routing.record import CallRecord

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
# Fields of ChatRequest that are not settings a provider could refuse.
NOT_SETTINGS = {"model", "messages", "labels"}

# One request that sets every setting in the table.
SCHEMA = struct_pb2.Struct()
SCHEMA.update({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
EVERYTHING = chat_pb2.ChatRequest(
    model="m",
    messages=[
        content_pb2.Message(
            role=content_pb2.ROLE_USER, name="alice", parts=[content_pb2.Part(text="hi")]
        )
    ],
    generation_config=chat_pb2.GenerationConfig(
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        max_output_tokens=3000,
        seed=7,
        stop_sequences=["END"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        # JSON_SCHEMA: the form every kind that takes response_format takes (Anthropic
        # refuses JSON_OBJECT, which its structured outputs cannot express).
        response_format=chat_pb2.ResponseFormat(
            type=chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_name="answer",
            json_schema=SCHEMA,
        ),
        reasoning_budget_tokens=1024,
        reasoning_effort=chat_pb2.REASONING_EFFORT_LOW,
        logprobs=True,
        top_logprobs=2,
        candidate_count=2,
    ),
    tools=[content_pb2.Tool(name="f")],
    tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO),
)
EVERYTHING.provider_options.update({"x_extra": 1})
BARE_MESSAGES = [
    content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hi")])
]


def deployment(kind: str, **fields: Any) -> Deployment:
    return Deployment("alias", "p", kind, "model-x", Capabilities(vision=True), **fields)


def test_the_table_covers_every_chatrequest_field_and_generation_setting() -> None:
    top = {f.name for f in chat_pb2.ChatRequest.DESCRIPTOR.fields} - NOT_SETTINGS
    generation = {
        f"generation_config.{f.name}" for f in chat_pb2.GenerationConfig.DESCRIPTOR.fields
    }
    expected = (top - {"generation_config"}) | generation | {"messages[].name"}
    assert set(unsupported.SETTINGS) == expected
    for kind, row in unsupported.TABLE.items():
        assert set(row) == expected, kind


def test_docs_show_the_same_table() -> None:
    text = DOC.read_text()
    begin, end = "<!-- settings-table:begin -->\n", "<!-- settings-table:end -->"
    assert begin in text and end in text
    shown = text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"
    assert shown == unsupported.table_markdown()


def test_every_setting_of_the_everything_request_is_set() -> None:
    assert all(present(EVERYTHING) for present in unsupported.SETTINGS.values())


def test_nothing_is_refused_for_an_empty_request() -> None:
    bare = chat_pb2.ChatRequest(model="m", messages=BARE_MESSAGES)
    for kind in unsupported.TABLE:
        assert unsupported.unsupported(bare, kind, streaming=True) == []


DIALECTS: dict[str, Dialect] = {
    "openai": OpenAIDialect("p"),
    "azure_openai": AzureOpenAIDialect("p", "2024-10-21", v1_api=True),
    "openai_compatible": CompatibleDialect(
        "p", OpenAIOptions(max_tokens_field="max_tokens", send_top_k=True)
    ),
    "anthropic": AnthropicDialect("p", 4096),
    "gemini": GeminiDialect("p"),
    "ollama": OllamaDialect("p", None),
}
# The wire key each setting shows up as, per kind (dotted for nested objects).
WIRE_KEYS: dict[str, dict[str, str]] = {
    "openai": {
        "generation_config.top_k": "top_k",
        "generation_config.reasoning_budget_tokens": "reasoning_budget_tokens",
        "generation_config.seed": "seed",
        "generation_config.logprobs": "logprobs",
        "generation_config.candidate_count": "n",
    },
    "anthropic": {
        "generation_config.seed": "seed",
        "generation_config.presence_penalty": "presence_penalty",
        "generation_config.frequency_penalty": "frequency_penalty",
        "generation_config.logprobs": "logprobs",
        "generation_config.candidate_count": "n",
    },
    "gemini": {
        "generation_config.top_k": "generationConfig.topK",
        "generation_config.seed": "generationConfig.seed",
        "generation_config.logprobs": "generationConfig.responseLogprobs",
        "generation_config.candidate_count": "generationConfig.candidateCount",
    },
    "ollama": {
        "generation_config.top_k": "options.top_k",
        "generation_config.seed": "options.seed",
        "generation_config.logprobs": "logprobs",
        "generation_config.candidate_count": "n",
    },
}
WIRE_KEYS["azure_openai"] = WIRE_KEYS["openai"]
WIRE_KEYS["openai_compatible"] = WIRE_KEYS["openai"]


def _has(body: dict[str, Any], dotted: str) -> bool:
    value: Any = body
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


@pytest.mark.parametrize("kind", sorted(DIALECTS))
def test_what_the_table_refuses_is_never_sent_and_what_it_takes_is(kind: str) -> None:
    """The request a drop_unsupported alias sends: the refused settings are gone and
    the others reach the wire."""
    request = chat_pb2.ChatRequest()
    request.CopyFrom(EVERYTHING)
    request.ClearField("provider_options")
    request.messages[0].ClearField("name")
    request.generation_config.ClearField("reasoning_effort")  # the budget stands for both
    target = deployment(kind, drop_unsupported=True)
    sent = as_sent(request, target, CallRecord(), streaming=False)
    body = DIALECTS[kind].chat_request(sent, target, stream=False).json_body
    for setting, wire_key in WIRE_KEYS[kind].items():
        refused = unsupported.TABLE[kind][setting] is unsupported.REFUSED
        assert _has(body, wire_key) is not refused, (kind, setting, body)


def _refusal(request: chat_pb2.ChatRequest, target: Deployment, streaming: bool) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        check_chat(request, target, streaming)
    return caught.value


def test_check_refuses_the_first_unsupported_setting_with_its_field() -> None:
    request = chat_pb2.ChatRequest(
        model="m",
        messages=BARE_MESSAGES,
        generation_config=chat_pb2.GenerationConfig(seed=1, frequency_penalty=0.5),
    )
    error = _refusal(request, deployment("anthropic"), streaming=False)
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CAPABILITY_UNSUPPORTED",
    )
    assert [v.field for v in error.field_violations] == ["generation_config.seed"]
    assert "seed" in error.message and "anthropic" in error.message


def test_drop_unsupported_passes_the_check_and_notes_what_was_left_out() -> None:
    request = chat_pb2.ChatRequest(
        model="m",
        messages=BARE_MESSAGES,
        generation_config=chat_pb2.GenerationConfig(seed=1, temperature=0.3),
    )
    target = deployment("anthropic", drop_unsupported=True)
    check_chat(request, target, streaming=False)
    record = CallRecord(served_by=target)
    sent = as_sent(request, target, record, streaming=False)
    assert not sent.generation_config.HasField("seed")
    assert sent.generation_config.temperature == pytest.approx(0.3)
    assert request.generation_config.HasField("seed")  # the caller's request is untouched
    assert list(record.route().dropped_settings) == ["generation_config.seed"]


def test_candidates_are_chat_only() -> None:
    request = chat_pb2.ChatRequest(
        model="m",
        messages=BARE_MESSAGES,
        generation_config=chat_pb2.GenerationConfig(candidate_count=2),
    )
    check_chat(request, deployment("openai"), streaming=False)
    error = _refusal(request, deployment("openai"), streaming=True)
    assert [v.field for v in error.field_violations] == ["generation_config.candidate_count"]


def test_provider_options_need_the_alias_to_allow_them() -> None:
    request = chat_pb2.ChatRequest(model="m", messages=BARE_MESSAGES)
    request.provider_options.update({"service_tier": "flex"})
    error = _refusal(request, deployment("openai"), streaming=False)
    assert [v.field for v in error.field_violations] == ["provider_options"]
    check_chat(request, deployment("openai", allow_provider_options=True), streaming=False)
    request.provider_options.update({"messages": []})
    error = _refusal(request, deployment("openai", allow_provider_options=True), False)
    assert [v.field for v in error.field_violations] == ["provider_options.messages"]


def test_participant_names_are_refused_where_no_name_goes_upstream() -> None:
    request = chat_pb2.ChatRequest(model="m")
    request.messages.add(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="a")])
    request.messages.add(role=content_pb2.ROLE_USER, name="bob", parts=[content_pb2.Part(text="b")])
    for kind in ("anthropic", "gemini", "ollama"):
        error = _refusal(request, deployment(kind), streaming=False)
        assert [v.field for v in error.field_violations] == ["messages[1].name"]
    check_chat(request, deployment("openai"), streaming=False)
    sent = OpenAIDialect("p").chat_request(request, deployment("openai"), False).json_body
    assert sent["messages"][1] == {"role": "user", "content": "b", "name": "bob"}
    target = deployment("gemini", drop_unsupported=True)
    record = CallRecord(served_by=target)
    dropped = as_sent(request, target, record, streaming=False)
    assert [m.name for m in dropped.messages] == ["", ""]
    assert list(record.route().dropped_settings) == ["messages[].name"]


def test_custom_kinds_decide_for_themselves() -> None:
    assert unsupported.unsupported(EVERYTHING, "custom", streaming=True) == []


def _options(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def test_provider_options_add_and_merge_objects_but_never_replace() -> None:
    body = {"model": "m", "generationConfig": {"temperature": 0.5}}
    merged = provider_options.merged(
        body, _options({"generationConfig": {"responseModalities": ["TEXT"]}, "labels": {}})
    )
    assert merged == {
        "model": "m",
        "generationConfig": {"temperature": 0.5, "responseModalities": ["TEXT"]},
        "labels": {},
    }
    assert body == {"model": "m", "generationConfig": {"temperature": 0.5}}  # not mutated
    with pytest.raises(GatewayError) as caught:
        provider_options.merged(body, _options({"generationConfig": {"temperature": 1}}))
    assert [v.field for v in caught.value.field_violations] == [
        "provider_options.generationConfig.temperature"
    ]


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("openai", "model"),
        ("openai", "stream_options"),
        ("anthropic", "system"),
        ("gemini", "contents"),
        ("gemini", "toolConfig"),
        ("ollama", "stream"),
        ("custom", "api_key"),
    ],
)
def test_protected_keys(kind: str, key: str) -> None:
    with pytest.raises(GatewayError) as caught:
        provider_options.check(_options({key: 1, "fine": 2}), kind)
    assert [v.field for v in caught.value.field_violations] == [f"provider_options.{key}"]
    provider_options.check(_options({"fine": 2}), kind)
