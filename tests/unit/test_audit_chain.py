"""The audit hash chain: sealing, canonical form, and verification of every kind of break."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.audit.chain import (
    GENESIS,
    Chain,
    canonical_json,
    head_of_line,
    is_hash,
    record_hash,
    seal,
    verify_lines,
)


def _records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "time": f"2026-01-01T00:00:{i:02d}.000Z",
            "request_id": f"req-{i}",
            "status": "OK",
            "latency_ms": 1.5 + i,
            "cost_usd": None,
            "labels": {"team": "ü-search"},
        }
        for i in range(count)
    ]


def _log(count: int) -> list[bytes]:
    chain = Chain()
    return [(chain.line(r) + "\n").encode("ascii") for r in _records(count)]


def test_canonical_json_is_sorted_compact_ascii_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"\\u00e9"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_hash_covers_the_previous_hash_and_everything_but_itself() -> None:
    record = {"a": 1, "prev_hash": GENESIS}
    expected = hashlib.sha256((GENESIS + '{"a":1,"prev_hash":"' + GENESIS + '"}').encode())
    assert record_hash(GENESIS, record) == expected.hexdigest()
    assert record_hash(GENESIS, {**record, "hash": "ignored"}) == expected.hexdigest()
    assert record_hash("1" * 64, record) != expected.hexdigest()
    assert record_hash(GENESIS, {**record, "a": 2}) != expected.hexdigest()


def test_seal_and_chain_link_records_in_order() -> None:
    chain = Chain()
    first = json.loads(chain.line({"n": 1}))
    second = json.loads(chain.line({"n": 2}))
    assert first["prev_hash"] == GENESIS
    assert second["prev_hash"] == first["hash"]
    assert chain.head == second["hash"]
    assert is_hash(first["hash"]) and not is_hash("xyz") and not is_hash(None)
    assert seal({"n": 1}, GENESIS) == first
    with pytest.raises(ValueError):
        Chain("not-a-hash")


def test_a_whole_log_verifies_and_reports_its_head() -> None:
    lines = _log(5)
    result = verify_lines(lines)
    assert result.ok and result.records == 5
    assert result.head == head_of_line(lines[-1].rstrip(b"\n"))
    empty = verify_lines([])
    assert empty.ok and empty.records == 0 and empty.head == GENESIS


def _edit(line: bytes, **changes: Any) -> bytes:
    """The line with fields changed, written canonically but not re-sealed."""
    record = json.loads(line)
    record.update(changes)
    return (canonical_json(record) + "\n").encode()


def _reseal(line: bytes, **changes: Any) -> bytes:
    """The line with fields changed and its own hash recomputed, as a careful forger would."""
    record = json.loads(line)
    return (canonical_json(seal({**record, **changes}, record["prev_hash"])) + "\n").encode()


def _reformat(line: bytes) -> bytes:
    return json.dumps(json.loads(line), indent=1).replace("\n", " ").encode() + b"\n"


MOVED = "removed, inserted or moved"
TAMPERING: list[tuple[str, Any, int, str]] = [
    ("edited value", lambda ls: [*ls[:2], _edit(ls[2], status="DENIED"), *ls[3:]], 3, "edited"),
    ("hash field edited", lambda ls: [*ls[:2], _edit(ls[2], hash="f" * 64), *ls[3:]], 3, "edited"),
    ("re-sealed edit", lambda ls: [*ls[:2], _reseal(ls[2], status="X"), *ls[3:]], 4, "line 3"),
    ("reformatted", lambda ls: [ls[0], _reformat(ls[1]), *ls[2:]], 2, "not canonical"),
    ("middle line deleted", lambda ls: [*ls[:2], *ls[3:]], 3, MOVED),
    ("first line deleted", lambda ls: ls[1:], 1, "start of a chain"),
    ("two lines swapped", lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2, MOVED),
    ("line duplicated", lambda ls: [*ls[:2], ls[1], *ls[2:]], 3, MOVED),
    ("not json", lambda ls: [*ls[:3], b"garbage\n", *ls[3:]], 4, "not valid JSON"),
    ("blank line", lambda ls: [*ls[:3], b"\n", *ls[3:]], 4, "not valid JSON"),
    ("not an object", lambda ls: [ls[0], b"[1, 2]\n", *ls[1:]], 2, "not a JSON object"),
    ("unchained", lambda ls: [ls[0], b'{"status":"OK"}\n', *ls[1:]], 2, "no hash chain"),
    ("cut-off last line", lambda ls: [*ls[:4], ls[4][:-20]], 5, "incomplete"),
]


@pytest.mark.parametrize(("name", "tamper", "line", "words"), TAMPERING)
def test_every_kind_of_tampering_names_the_first_broken_line(
    name: str, tamper: Any, line: int, words: str
) -> None:
    result = verify_lines(tamper(_log(5)))
    assert not result.ok, name
    assert result.broken_line == line, (name, result)
    assert words in result.problem, (name, result.problem)
    assert result.records == line - 1


def test_removing_the_last_lines_changes_only_the_head() -> None:
    """The documented limit: a cut at the end verifies; the head is what tells."""
    lines = _log(5)
    whole, cut = verify_lines(lines), verify_lines(lines[:-1])
    assert cut.ok and cut.records == 4
    assert cut.head != whole.head


def test_head_of_line_reads_only_chained_records() -> None:
    line = _log(1)[0]
    assert head_of_line(line) == json.loads(line)["hash"]
    assert head_of_line(b'{"status":"OK"}') is None
    assert head_of_line(b"[]") is None
    assert head_of_line(b"{not json") is None


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_record = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("hash", "prev_hash")), _values, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_record, min_size=2, max_size=6), data=st.data())
def test_any_records_round_trip_and_any_single_deletion_is_caught(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    chain = Chain()
    lines = [(chain.line(r) + "\n").encode("ascii") for r in records]
    result = verify_lines(lines)
    assert result.ok and result.records == len(records) and result.head == chain.head
    gone = data.draw(st.integers(0, len(lines) - 2))  # the last line: see the test above
    broken = verify_lines(lines[:gone] + lines[gone + 1 :])
    assert not broken.ok and broken.broken_line == gone + 1
