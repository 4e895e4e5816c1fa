"""Tamper evidence for the audit log: a SHA-256 hash chain over its lines (pure).

Each chained record carries `prev_hash` (the `hash` of the record before it, or
GENESIS for the first record of a file) and `hash`: the hex SHA-256 of the previous
hash followed by the record's canonical JSON without `hash`. Every line of a chained log
is the canonical JSON of its record, hash included, so that any change to a line — an
edit, a deletion, an insertion, two lines swapped — breaks the chain at that line.

Canonical JSON: keys sorted, no whitespace, ASCII only, no NaN or infinity.

The chain proves that the lines were not changed after they were written, relative to
one another. It cannot prove that lines were not removed from the end, nor that the whole
file was not rewritten with a new chain: anchor the head hash (`Verification.head`, also
logged by the gateway when it closes the log) somewhere else when that matters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
HASH_FIELD = "hash"
PREV_FIELD = "prev_hash"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical_json(record: Mapping[str, Any]) -> str:
    """The one serialization hashes are computed over (and chained lines are written in)."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of `prev_hash` followed by the canonical JSON of `record` minus `hash`."""
    body = {k: v for k, v in record.items() if k != HASH_FIELD}
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(body).encode("ascii"))
    return digest.hexdigest()


def is_hash(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def seal(record: Mapping[str, Any], prev_hash: str) -> dict[str, Any]:
    """A copy of `record` chained to `prev_hash`: with `prev_hash` and `hash` set."""
    sealed = {k: v for k, v in record.items() if k not in (HASH_FIELD, PREV_FIELD)}
    sealed[PREV_FIELD] = prev_hash
    sealed[HASH_FIELD] = record_hash(prev_hash, sealed)
    return sealed


class Chain:
    """The head of a chain being written: turns records into chained lines, in order."""

    def __init__(self, head: str = GENESIS) -> None:
        if not is_hash(head):
            raise ValueError("a chain head is 64 lowercase hex digits")
        self.head = head

    def line(self, record: Mapping[str, Any]) -> str:
        """The next line (without its newline); advances the head."""
        sealed = seal(record, self.head)
        self.head = sealed[HASH_FIELD]
        return canonical_json(sealed)


def head_of_line(line: bytes) -> str | None:
    """The `hash` of a chained line, or None when the line is not a chained record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    value = record.get(HASH_FIELD)
    return value if is_hash(value) else None


@dataclass(frozen=True)
class Verification:
    records: int  # lines verified before the first broken one (all of them when ok)
    head: str  # hash of the last good record; GENESIS for an empty log
    broken_line: int | None = None  # 1-based
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def _check(raw: bytes, prev_hash: str, number: int) -> tuple[str, str]:
    """(problem, hash): problem is "" when the line continues the chain."""
    if not raw.endswith(b"\n"):
        return "incomplete: the line has no end (a write was cut short)", ""
    text = raw[:-1]
    try:
        record = json.loads(text)
    except ValueError:
        return "not valid JSON", ""
    if not isinstance(record, dict):
        return "not a JSON object", ""
    own, prev = record.get(HASH_FIELD), record.get(PREV_FIELD)
    if not is_hash(own) or not is_hash(prev):
        return "no hash chain fields (prev_hash, hash)", ""
    if prev != prev_hash:
        if number == 1:
            return "prev_hash is not the start of a chain (lines before it were removed?)", ""
        return (
            f"prev_hash does not match the hash of line {number - 1} "
            "(a line was removed, inserted or moved)",
            "",
        )
    if record_hash(prev_hash, record) != own:
        return "hash does not match the record (the line was edited)", ""
    try:
        canonical = canonical_json(record).encode("ascii")
    except ValueError:
        return "not canonical JSON (the line was edited)", ""
    if canonical != text:
        return "not canonical JSON (the line was edited)", ""
    return "", str(own)


def verify_lines(lines: Iterable[bytes], start: str = GENESIS) -> Verification:
    """Checks a chained log, line by line (each with its b"\\n"); stops at the first break."""
    head = start
    count = 0
    for number, raw in enumerate(lines, start=1):
        problem, own = _check(raw, head, number)
        if problem:
            return Verification(count, head, number, problem)
        head = own
        count += 1
    return Verification(count, head)
