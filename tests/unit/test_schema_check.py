"""The JSON Schema check on its own: which schemas it refuses, what it says, and that
each distinct schema is checked once."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from service import schema_check
from service.schema_check import schema_problem


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": 12, "properties": "x"}, "draft 2020-12"),
        ({"type": "not-a-type"}, "at $.type: 'not-a-type' is not one of ['array'"),
        ({"properties": {"a": {"type": ["string", "bogus"]}}}, "at $.properties.a.type[1]"),
        ({"minItems": -1}, "at $.minItems"),
        ({"pattern": "("}, "is not a 'regex'"),
        ({"$defs": {"x": {"enum": "a"}}}, "at $['$defs'].x.enum"),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "minimum": "0"}, "draft 4"),
    ],
)
def test_invalid_schemas_are_described(schema: dict[str, Any], says: str) -> None:
    problem = schema_problem(struct(schema))
    assert problem is not None
    assert problem.startswith("is not a valid JSON Schema (")
    assert says in problem


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "object", "properties": {"n": {"type": "integer", "maxLength": 5}}},
        {"type": ["string", "null"], "format": "date-time"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"a": {}}},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {"a": {}}},
        {"$ref": "https://elsewhere.example/never-fetched.json"},
        {"anyOf": [{"type": "string"}, {"type": "number"}], "x-vendor": {"any": "thing"}},
    ],
)
def test_valid_schemas_pass(schema: dict[str, Any]) -> None:
    assert schema_problem(struct(schema)) is None


def test_a_long_complaint_is_cut() -> None:
    problem = schema_problem(struct({"enum": "x" * 2000}))
    assert problem is not None and len(problem) < schema_check.MAX_DESCRIPTION + 60


def test_each_distinct_schema_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[dict[str, Any]] = []
    real = schema_check._check

    def counting(document: dict[str, Any]) -> str | None:
        checked.append(document)
        return real(document)

    monkeypatch.setattr(schema_check, "_check", counting)
    schema = {"type": "object", "properties": {"unique-to-this-test": {"type": "string"}}}
    for _ in range(3):
        assert schema_problem(struct(schema)) is None
        assert schema_problem(struct({**schema, "required": 7})) is not None
    assert len(checked) == 2


def test_remembered_verdicts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema_check, "MAX_VERDICTS", 4)
    for n in range(10):
        schema_problem(struct({"title": f"bounded-{n}"}))
    assert len(schema_check._verdicts) == 4
