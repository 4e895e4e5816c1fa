"""Checks the JSON Schemas a caller sends (tool parameters, response formats) against the
JSON Schema meta-schema, so that a schema no provider could use is refused before any
upstream call.

A schema is checked against the draft its `$schema` names (draft 4, 6, 7, 2019-09 or
2020-12), else against draft 2020-12, with formats checked (`pattern` must be a regular
expression). Only the schema itself is checked: no `$ref` is ever followed outside the
bundled meta-schemas, so nothing is fetched.

Callers send the same tool schemas with every call: each distinct schema is checked once
and the verdict kept (by the SHA-256 of its deterministic serialization, a bounded number
of them, least recently used first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from google.protobuf import json_format, struct_pb2
from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

MAX_VERDICTS = 1024
MAX_DESCRIPTION = 300  # characters of the meta-schema's complaint kept

_DRAFTS: dict[str, tuple[type[Validator], str]] = {}
for _cls, _name in (
    (Draft4Validator, "draft 4"),
    (Draft6Validator, "draft 6"),
    (Draft7Validator, "draft 7"),
    (Draft201909Validator, "draft 2019-09"),
    (Draft202012Validator, "draft 2020-12"),
):
    _uri = str(_cls.META_SCHEMA.get("$id") or _cls.META_SCHEMA.get("id"))
    _DRAFTS[_uri.rstrip("#")] = (_cls, _name)
_DEFAULT_DRAFT: tuple[type[Validator], str] = (Draft202012Validator, "draft 2020-12")
_meta_validators: dict[type[Validator], Validator] = {}
_verdicts: OrderedDict[bytes, str | None] = OrderedDict()


def schema_problem(schema: struct_pb2.Struct) -> str | None:
    """Why `schema` is not a valid JSON Schema (a short description naming the place in
    the schema, e.g. "$.properties.a.type"), or None when it is one."""
    digest = hashlib.sha256(schema.SerializeToString(deterministic=True)).digest()
    if digest in _verdicts:
        _verdicts.move_to_end(digest)
        return _verdicts[digest]
    verdict = _check(json_format.MessageToDict(schema))
    _verdicts[digest] = verdict
    while len(_verdicts) > MAX_VERDICTS:
        _verdicts.popitem(last=False)
    return verdict


def _check(document: dict[str, Any]) -> str | None:
    declared = document.get("$schema")
    cls, name = (
        _DRAFTS.get(declared.rstrip("#"), _DEFAULT_DRAFT)
        if isinstance(declared, str)
        else _DEFAULT_DRAFT
    )
    validator = _meta_validators.get(cls)
    if validator is None:
        validator = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
        _meta_validators[cls] = validator
    try:
        error = best_match(validator.iter_errors(document))
    except RecursionError:
        return f"is not a usable JSON Schema ({name}): nested too deeply"
    if error is None:
        return None
    error = _innermost(error)
    complaint = f"at {error.json_path}: {error.message}"
    if len(complaint) > MAX_DESCRIPTION:
        complaint = complaint[: MAX_DESCRIPTION - 1] + "…"
    return f"is not a valid JSON Schema ({name}): {complaint}"


def _innermost(error: ValidationError) -> ValidationError:
    """The most specific cause: "'x' is not one of [...]" rather than "is not valid
    under any of the given schemas"."""
    for _ in range(16):
        if not error.context:
            break
        inner = best_match(error.context)
        if inner is None:
            break
        error = inner
    return error
