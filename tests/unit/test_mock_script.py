"""The mock provider's pure half and its fault parsing."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from llmgateway.v1 import chat_pb2, content_pb2

from service.errors import GatewayError
from service.providers import mock_script
from service.providers.mock_faults import Fault, apply_metadata


def _request(text: str, **kwargs: object) -> chat_pb2.ChatRequest:
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text=text)])
    return chat_pb2.ChatRequest(model="m", messages=[message], **kwargs)  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_chunks_reassemble_to_the_whole_response(text: str) -> None:
    plan = mock_script.plan_reply(_request(text))
    whole = mock_script.to_response(plan)
    chunks = mock_script.to_chunks(plan)
    assert "".join(c.text_delta for c in chunks) == whole.message.parts[0].text
    assert sum(1 for c in chunks if c.finish_reason) == 1
    assert chunks[-2].finish_reason == whole.finish_reason
    assert chunks[-1].usage == whole.usage
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens


def test_tool_call_fragments_reassemble() -> None:
    schema = struct_pb2.Struct()
    schema.update(
        {
            "type": "object",
            "properties": {
                "q": {"type": "string"},
                "n": {"type": "number"},
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["fast", "slow"]},
            },
        }
    )
    tool = content_pb2.Tool(name="search", parameters=schema)
    plan = mock_script.plan_reply(_request("please search the long archive", tools=[tool]))
    [call] = plan.tool_calls
    assert json.loads(call.arguments) == {
        "q": "please search the long archive",
        "n": 5.0,
        "ok": True,
        "tags": ["please search the long archive"],
        "mode": "fast",
    }
    chunks = mock_script.to_chunks(plan)
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert "".join(d.arguments_delta for d in deltas) == call.arguments
    assert all(len(d.arguments_delta) <= mock_script.ARGUMENT_FRAGMENT for d in deltas)


def test_tool_choice_none_never_calls() -> None:
    tool = content_pb2.Tool(name="search")
    request = _request(
        "search",
        tools=[tool],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_NONE),
    )
    plan = mock_script.plan_reply(request)
    assert plan.tool_calls == () and plan.text == "search"


def test_stop_sequence_cuts_the_reply() -> None:
    config = chat_pb2.GenerationConfig(stop_sequences=["STOP"])
    plan = mock_script.plan_reply(_request("say this STOP not this", generation_config=config))
    assert plan.text == "say this " and plan.finish_reason == chat_pb2.FINISH_REASON_STOP


def test_embedding_is_deterministic_and_sized() -> None:
    assert mock_script.embedding("a", 50) == mock_script.embedding("a", 50)
    assert len(mock_script.embedding("a", 50)) == 50
    assert mock_script.embedding("a", 8) != mock_script.embedding("b", 8)


def test_fault_metadata_overrides_and_validates() -> None:
    base = Fault(http_status=500)
    fault = apply_metadata(base, {"x-mock-fail-status": "429", "x-mock-first-attempts": "2"}, "p")
    assert (fault.http_status, fault.first_attempts) == (429, 2)
    assert fault.fails(1) and fault.fails(2) and not fault.fails(3)
    assert apply_metadata(base, {"x-mock-fail-status": "429", "x-mock-target": "q"}, "p") == base
    with pytest.raises(GatewayError) as caught:
        apply_metadata(base, {"x-mock-stall": "-1"}, "p")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not Fault().fails(1)
