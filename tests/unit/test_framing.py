"""SSE and NDJSON decoding: the WHATWG rules, and any split of the bytes gives the same
events (property test)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.providers.framing import FramingError, NdjsonDecoder, SseDecoder, SseEvent


def decode_sse(pieces: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)]
    return events + decoder.close()


def decode_ndjson(pieces: list[bytes]) -> list[object]:
    decoder = NdjsonDecoder()
    values = [v for piece in pieces for v in decoder.feed(piece)]
    return values + decoder.close()


def test_whatwg_rules() -> None:
    body = (
        "\ufeff: keep-alive\r\n\r\n"
        'event: message_start\r\ndata: {"a":1}\r\n\r\n'
        "data:no-space\n\n"
        "data: line one\ndata: line two\n\n"
        "id: 7\nretry: 100\ndata: x  \n\n"
        "unknown: field\n\n"
        "\n\n"
        "event: ping\rdata: {}\r\r"
        "data: [DONE]"  # no blank line before EOF: flushed at close
    ).encode()
    assert decode_sse([body]) == [
        SseEvent("message_start", '{"a":1}'),
        SseEvent("", "no-space"),
        SseEvent("", "line one\nline two"),
        SseEvent("", "x  "),
        SseEvent("ping", "{}"),
        SseEvent("", "[DONE]"),
    ]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    assert decode_sse([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [
        SseEvent("", "a"),
        SseEvent("", "b"),
    ]


def test_invalid_utf8_and_oversized_events_raise() -> None:
    with pytest.raises(FramingError):
        decode_sse([b"data: \xff\xfe\n\n"])
    decoder = SseDecoder(max_event_bytes=1024)
    with pytest.raises(FramingError):
        decoder.feed(b"data: " + b"x" * 2000)
    with pytest.raises(FramingError):
        decode_ndjson([b'{"a":1}\n{not json}\n'])


def test_large_event_over_64_kib() -> None:
    payload = "y" * (200 * 1024)
    assert decode_sse([f"data: {payload}\n\n".encode()]) == [SseEvent("", payload)]


def test_ndjson_without_final_newline_and_crlf() -> None:
    assert decode_ndjson([b'{"a":1}\r\n\n{"b":', b'"\xc3\xa9"}']) == [{"a": 1}, {"b": "é"}]


_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=30,
)
_events = st.lists(
    st.tuples(
        st.sampled_from(["", "message", "content_block_delta"]),
        st.lists(_texts, min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=8,
)


def _encode(events: list[tuple[str, list[str]]], ending: str) -> bytes:
    out = []
    for name, lines in events:
        block = ([f"event: {name}"] if name else []) + [f"data: {line}" for line in lines]
        out.append(ending.join(block) + ending + ending)
    return (": comment" + ending + "".join(out)).encode()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(
    _events, st.sampled_from(["\n", "\r\n", "\r"]), st.lists(st.integers(0, 10_000), max_size=12)
)
def test_sse_any_split_gives_the_same_events(
    events: list[tuple[str, list[str]]], ending: str, cuts: list[int]
) -> None:
    body = _encode(events, ending)
    whole = decode_sse([body])
    assert whole == [SseEvent(name, "\n".join(lines)) for name, lines in events]
    assert decode_sse(_split(body, cuts)) == whole
    assert decode_sse([bytes([b]) for b in body]) == whole


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(0, 10_000), max_size=12),
    st.booleans(),
)
def test_ndjson_any_split_gives_the_same_values(
    values: list[dict[str, str]], cuts: list[int], final_newline: bool
) -> None:
    import json

    body = "\n".join(json.dumps(v, ensure_ascii=False) for v in values).encode()
    if final_newline:
        body += b"\n"
    assert decode_ndjson(_split(body, cuts)) == values
