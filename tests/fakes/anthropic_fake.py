"""A fake Anthropic Messages upstream (reference §4) on a real loopback HTTP server.

It checks `x-api-key` and `anthropic-version` (answering in Anthropic's own error
envelope when they are wrong), echoes the last user text, calls every offered tool
(or the forced one) with arguments built from the tool's schema, writes JSON that fits
`output_config.format`, and thinks when `thinking` is enabled. Streams follow §4.4 event
by event. Switches on the fake (and the scripted-response helpers at the bottom)
reproduce the §10 edge cases that apply to Anthropic.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http_server import (
    FakeHttpServer,
    FakeRequest,
    FakeResponse,
    FakeUpstream,
    Write,
    split_bytes,
)
from tests.fakes.rate_limits import FakeQuota

API_KEY = "sk-ant-fake-0123456789"
IMAGE_TOKENS = 85
DOCUMENT_TOKENS = 1500  # a PDF, whatever its size
MAX_CACHE_BREAKPOINTS = 4
JSON_FRAGMENT = 7  # characters of tool input JSON per input_json_delta
_WORDS = re.compile(r"\s*\S+")
_ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


@dataclass
class StreamStyle:
    """How the SSE bytes are written (§10 items 1-6, 14, 15, 19, 21)."""

    line_ending: str = "lf"  # "lf", "crlf", "cr", or "mixed" (rotates per event)
    space: bool = True  # "data: x" or "data:x"
    comments: bool = False  # ": keep-alive" lines before the first event and between events
    leading_pings: int = 0  # ping events before any content (long thinking)
    pings: int = 1  # ping events after the first content_block_start
    multiline_data: bool = False  # each JSON payload spread over several data: lines
    unknown_events: bool = False  # event types (and fields) this client never heard of
    usage_deltas: int = 1  # message_delta events, each with cumulative usage
    piece_size: int | None = None  # cut the body at arbitrary byte offsets
    coalesce: bool = False  # every event in one write
    delay: float = 0.0  # between writes


@dataclass
class Reply:
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]

    def message(self, message_id: str) -> dict[str, Any]:
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage,
        }


def count_words(text: str) -> int:
    return len(_WORDS.findall(text))


def split_words(text: str) -> list[str]:
    words: list[str] = _WORDS.findall(text)
    tail = text[sum(map(len, words)) :]
    if tail:
        words.append(tail)
    return words or [""]


def example_value(schema: dict[str, Any], text: str) -> Any:
    """A deterministic value that fits a JSON schema, seeded with the user's text."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_value(sub, text) for name, sub in sorted(properties.items())}
    if kind == "array":
        return [example_value(schema.get("items", {}), text)]
    if kind == "integer":
        return count_words(text)
    if kind == "number":
        return count_words(text) / 2
    if kind == "boolean":
        return bool(text)
    return text


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user turn (or its tool results when it has no text)."""
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        blocks = _blocks(message["content"])
        texts = [b["text"] for b in blocks if b["type"] == "text"]
        if texts:
            return " ".join(texts)
        results = [b.get("content", "") for b in blocks if b["type"] == "tool_result"]
        return " ".join(r if isinstance(r, str) else json.dumps(r) for r in results)
    return ""


def _block_tokens(block: dict[str, Any]) -> int:
    kind = block["type"]
    if kind == "text":
        return count_words(block["text"])
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        return DOCUMENT_TOKENS
    if kind == "tool_result":
        return count_words(str(block.get("content", "")))
    if kind == "tool_use":
        return count_words(json.dumps(block["input"])) + 1
    return 0


def prompt_elements(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt in the order Anthropic caches it: tools, system, then messages."""
    system = body.get("system") or []
    if isinstance(system, str):
        system = [{"type": "text", "text": system}] if system else []
    elements = [{"type": "tool", **tool} for tool in body.get("tools") or []]
    elements.extend(system)
    for message in body["messages"]:
        elements.extend(_blocks(message["content"]))
    return elements


def _element_tokens(element: dict[str, Any]) -> int:
    if element["type"] == "tool":
        return count_words(json.dumps(element.get("input_schema", {}))) + 1
    return _block_tokens(element)


def input_tokens(body: dict[str, Any]) -> int:
    return sum(_element_tokens(element) for element in prompt_elements(body))


def cached_prefix(body: dict[str, Any]) -> tuple[str, int] | None:
    """(digest, tokens) of the prompt up to its last cache breakpoint, or None."""
    elements = prompt_elements(body)
    marks = [i for i, element in enumerate(elements) if "cache_control" in element]
    if not marks:
        return None
    prefix = elements[: marks[-1] + 1]
    digest = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
    return digest, sum(_element_tokens(element) for element in prefix)


def prompt_problem(body: dict[str, Any]) -> str | None:
    """What Anthropic would refuse in the prompt's cache breakpoints and documents."""
    elements = prompt_elements(body)
    found = sum(1 for element in elements if "cache_control" in element)
    if found > MAX_CACHE_BREAKPOINTS:
        return (
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided."
            f" Found {found}."
        )
    for element in elements:
        control = element.get("cache_control")
        if control is not None and (
            control.get("type") != "ephemeral" or control.get("ttl", "5m") not in ("5m", "1h")
        ):
            return "cache_control: Input tag does not match the expected tags"
        if element["type"] != "document":
            continue
        source = element["source"]
        if source["type"] == "base64":
            if source.get("media_type") != "application/pdf":
                return "document.source.media_type: Input should be 'application/pdf'"
            try:
                base64.b64decode(source["data"], validate=True)
            except ValueError:
                return "document.source.data: The PDF specified was not valid."
        elif source["type"] != "url" or not str(source.get("url", "")).startswith("https://"):
            return "document.source: Input tag does not match the expected tags"
    return None


def error_body(error_type: str, message: str, request_id: str = "req_fake_error") -> bytes:
    envelope = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return json.dumps(envelope).encode()


def error_response(
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str = "req_fake_error",
) -> FakeResponse:
    """An error in Anthropic's envelope, as the API answers it."""
    all_headers = {
        "content-type": "application/json",
        "request-id": request_id,
        "x-should-retry": "true" if status in (408, 409, 429) or status >= 500 else "false",
        **(headers or {}),
    }
    return FakeResponse(status, all_headers, [Write(error_body(error_type, message, request_id))])


def rate_limited(headers: dict[str, str] | None = None) -> FakeResponse:
    """429 rate_limit_error; pass retry-after / retry-after-ms / ratelimit headers."""
    return error_response(
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
        headers,
    )


def overloaded(headers: dict[str, str] | None = None) -> FakeResponse:
    return error_response(529, "overloaded_error", "Overloaded", headers)


def api_error() -> FakeResponse:
    return error_response(500, "api_error", "Internal server error")


def context_too_long() -> FakeResponse:
    return error_response(
        400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
    )


def billing_error() -> FakeResponse:
    return error_response(
        402, "billing_error", "Your credit balance is too low to access the Anthropic API."
    )


def spend_limit() -> FakeResponse:
    return error_response(
        400,
        "invalid_request_error",
        "You have reached your specified API usage limits. You will regain access on "
        "2026-02-01 at 00:00 UTC.",
    )


def not_found(model: str = "claude-nope") -> FakeResponse:
    return error_response(404, "not_found_error", f"model: {model}")


def too_large_from_cdn() -> FakeResponse:
    """413 from the CDN in front of the API: HTML, not the JSON envelope."""
    page = (
        b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
        b"<center><h1>413 Request Entity Too Large</h1></center>\r\n"
        b"<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
    )
    return FakeResponse.raw(page, status=413, content_type="text/html")


def bad_gateway_html() -> FakeResponse:
    return FakeResponse.raw(
        b"<html><body><h1>502 Bad Gateway</h1></body></html>", status=502, content_type="text/html"
    )


def empty_error(status: int = 503) -> FakeResponse:
    return FakeResponse.raw(b"", status=status, content_type="text/plain")


def malformed_json() -> FakeResponse:
    return FakeResponse.raw(
        b'{"id":"msg_bad","type":"message","content":[{"type":"text"',
        status=200,
        content_type="application/json",
    )


def gzip_json(body: Any, status: int = 200) -> FakeResponse:
    data = gzip.compress(json.dumps(body).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    return FakeResponse(status, headers, [Write(data)])


def raw_stream(events: list[tuple[str, str]], **kwargs: Any) -> FakeResponse:
    """A 200 event stream of exactly these (event, data) pairs, one write each."""
    pieces = [f"event: {name}\ndata: {data}\n\n".encode() for name, data in events]
    headers = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_fake_raw"}
    writes = [Write(piece) for piece in pieces]
    return FakeResponse(200, headers, writes, chunked=True, **kwargs)


@dataclass
class AnthropicFake(FakeUpstream):
    """`async with AnthropicFake() as fake:`; base_url for the gateway is `fake.url + "/v1"`."""

    api_key: str = API_KEY
    style: StreamStyle = field(default_factory=StreamStyle)
    cache_read: int = 0  # cache_read_input_tokens reported
    cache_creation: int = 0  # cache_creation_input_tokens reported
    stop_reason: str | None = None  # overrides the natural stop reason ("refusal", ...)
    error_after: int | None = None  # stream: `event: error` after this many content deltas
    error_type: str = "overloaded_error"
    cut_after: int | None = None  # stream: clean EOF after this many events (no message_stop)
    reset_after: int | None = None  # stream: TCP reset after this many events
    raw_after: tuple[int, bytes] | None = None  # stream: these bytes after N events, then EOF
    header_delay: float = 0.0  # seconds before the status line
    # The provider's own rate limit: enforced with 429s and reported in
    # anthropic-ratelimit-* headers; without it, fixed headers of a past window.
    quota: FakeQuota | None = None
    server: FakeHttpServer = field(init=False)
    # Prompt prefixes written to the cache (digests); a repeat reads them back.
    cached: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.server = FakeHttpServer(self._handle)

    def reset(self) -> None:
        """Back to plain behaviour between tests that share one fake."""
        self.style = StreamStyle()
        self.cache_read = self.cache_creation = 0
        self.cached.clear()
        self.stop_reason = None
        self.error_after = self.cut_after = self.reset_after = None
        self.raw_after = None
        self.error_type = "overloaded_error"
        self.header_delay = 0.0
        self.server.scripted.clear()
        self.server.requests.clear()

    # The API ---------------------------------------------------------------

    def _handle(self, request: FakeRequest) -> FakeResponse:
        request_id = f"req_011Fake{len(self.server.requests):06d}"
        if request.method == "POST" and request.path == "/v1/messages/count_tokens":
            return self._count_tokens(request, request_id)
        if request.method != "POST" or request.path != "/v1/messages":
            return error_response(404, "not_found_error", "Not Found", request_id=request_id)
        if request.headers.get("x-api-key") != self.api_key:
            return error_response(
                401, "authentication_error", "invalid x-api-key", request_id=request_id
            )
        if not request.headers.get("anthropic-version"):
            return error_response(
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
                request_id=request_id,
            )
        try:
            body = request.json()
        except ValueError:
            return error_response(
                400,
                "invalid_request_error",
                "There was an error parsing the body",
                request_id=request_id,
            )
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return error_response(
                    400, "invalid_request_error", f"{name}: Field required", request_id=request_id
                )
        problem = prompt_problem(body)
        if problem is not None:
            return error_response(400, "invalid_request_error", problem, request_id=request_id)
        quota = self.quota
        if quota is not None and quota.over():
            return error_response(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
                {"retry-after": str(max(1, round(quota.reset_in()))), **quota.anthropic_headers()},
                request_id=request_id,
            )
        reply = self.reply(body)
        if quota is not None:
            quota.charge(reply.usage["input_tokens"] + reply.usage["output_tokens"])
        message_id = "msg_01" + hashlib.sha256(request.body).hexdigest()[:20]
        headers = self._headers(request_id)
        if body.get("stream"):
            return self._stream(reply, message_id, headers)
        data = json.dumps(reply.message(message_id), ensure_ascii=False).encode()
        return FakeResponse(
            200,
            {"content-type": "application/json", **headers},
            [Write(data)],
            header_delay=self.header_delay,
        )

    def _headers(self, request_id: str) -> dict[str, str]:
        limits = (
            self.quota.anthropic_headers()
            if self.quota is not None
            else {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2026-01-01T00:01:00Z",
            }
        )
        return {
            "request-id": request_id,
            "anthropic-organization-id": "5f0e5b3a-0000-4000-8000-000000000001",
            **limits,
        }

    def _count_tokens(self, request: FakeRequest, request_id: str) -> FakeResponse:
        """POST /v1/messages/count_tokens: `{"input_tokens": N}` for a Messages body
        without max_tokens (reference §4; cached prefixes count in full)."""
        if request.headers.get("x-api-key") != self.api_key:
            return error_response(
                401, "authentication_error", "invalid x-api-key", request_id=request_id
            )
        body = request.json()
        for name in ("model", "messages"):
            if name not in body:
                return error_response(
                    400, "invalid_request_error", f"{name}: Field required", request_id=request_id
                )
        for name in ("max_tokens", "stream", "temperature", "stop_sequences"):
            if name in body:
                return error_response(
                    400,
                    "invalid_request_error",
                    f"{name}: Extra inputs are not permitted",
                    request_id=request_id,
                )
        problem = prompt_problem(body)
        if problem is not None:
            return error_response(400, "invalid_request_error", problem, request_id=request_id)
        return FakeResponse(
            200,
            {"content-type": "application/json", **self._headers(request_id)},
            [Write(json.dumps({"input_tokens": input_tokens(body)}).encode())],
        )

    def reply(self, body: dict[str, Any]) -> Reply:
        text = last_user_text(body["messages"])
        digest = hashlib.sha256(text.encode()).hexdigest()
        content: list[dict[str, Any]] = []
        output = 0
        thinking_words = 0
        if (body.get("thinking") or {}).get("type") == "enabled":
            thought = f"The user wrote: {text}"
            thinking_words = count_words(thought)
            content.append({"type": "thinking", "thinking": thought, "signature": "Eq" + digest})
            if "redact" in text:
                # Reasoning the safety systems encrypted (§4.3): opaque `data`.
                content.append({"type": "redacted_thinking", "data": "EmwK" + digest[:24]})
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        output_format = (body.get("output_config") or {}).get("format") or {}
        stop_sequence = None
        if tools and choice["type"] != "none":
            if choice["type"] == "tool":
                tools = [t for t in tools if t["name"] == choice["name"]]
            content.append({"type": "text", "text": "Let me check."})
            for n, tool in enumerate(tools):
                arguments = example_value(tool["input_schema"], text)
                content.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_{n:02d}{digest[:22]}",
                        "name": tool["name"],
                        "input": arguments,
                    }
                )
                output += count_words(json.dumps(arguments)) + 1
            output += 3
            stop = "tool_use"
        elif output_format.get("type") == "json_schema":
            answer = json.dumps(example_value(output_format["schema"], text))
            content.append({"type": "text", "text": answer})
            output += count_words(answer)
            stop = "end_turn"
        else:
            answer, stop, stop_sequence = self._limit(
                text, body["max_tokens"], body.get("stop_sequences") or []
            )
            content.append({"type": "text", "text": answer})
            output += count_words(answer)
        uncached, cache_creation, cache_read = (
            input_tokens(body),
            self.cache_creation,
            self.cache_read,
        )
        prefix = cached_prefix(body)
        if prefix is not None:
            digest, tokens = prefix
            uncached -= tokens
            if digest in self.cached:
                cache_read += tokens
            else:
                self.cached.add(digest)
                cache_creation += tokens
        usage: dict[str, Any] = {
            "input_tokens": uncached,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output + thinking_words,
        }
        if thinking_words:
            usage["output_tokens_details"] = {"thinking_tokens": thinking_words}
        if self.stop_reason is not None:
            stop = self.stop_reason
        return Reply(body["model"], content, stop, stop_sequence, usage)

    @staticmethod
    def _limit(text: str, max_tokens: int, stops: list[str]) -> tuple[str, str, str | None]:
        cuts = [(text.index(s), s) for s in stops if s in text]
        if cuts:
            position, stop = min(cuts)
            text = text[:position]
        words = split_words(text)
        if len(words) > max_tokens:
            return "".join(words[:max_tokens]), "max_tokens", None
        if cuts:
            return text, "stop_sequence", stop
        return text, "end_turn", None

    # Streams ---------------------------------------------------------------

    def events(self, reply: Reply, message_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The §4.4 event sequence for a reply (before any injected fault)."""
        style = self.style
        usage = reply.usage
        start_usage = {
            "input_tokens": usage["input_tokens"],
            "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
            "cache_read_input_tokens": usage["cache_read_input_tokens"],
            "output_tokens": 1,
        }
        start = dict(reply.message(message_id), content=[], stop_reason=None, usage=start_usage)
        out: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        if style.unknown_events:
            out.append(
                ("message_annotation", {"type": "message_annotation", "annotation": {"k": 1}})
            )
        out.extend(("ping", {"type": "ping"}) for _ in range(style.leading_pings))
        for index, block in enumerate(reply.content):
            kind = block["type"]
            empty: dict[str, Any]
            deltas: list[dict[str, Any]]
            if kind == "text":
                empty = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": w} for w in split_words(block["text"])]
            elif kind == "redacted_thinking":
                empty = dict(block)  # arrives whole in its start event, no deltas
                deltas = []
            elif kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": w}
                    for w in split_words(block["thinking"])
                ]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                empty = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                arguments = json.dumps(block["input"], ensure_ascii=False)
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas.extend(
                    {"type": "input_json_delta", "partial_json": arguments[i : i + JSON_FRAGMENT]}
                    for i in range(0, len(arguments), JSON_FRAGMENT)
                )
            out.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": empty},
                )
            )
            if index == 0:
                out.extend(("ping", {"type": "ping"}) for _ in range(style.pings))
            for delta in deltas:
                payload = {"type": "content_block_delta", "index": index, "delta": delta}
                if style.unknown_events:
                    payload["obfuscation"] = "xyz"
                out.append(("content_block_delta", payload))
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        total = usage["output_tokens"]
        for n in range(1, style.usage_deltas + 1):
            last = n == style.usage_deltas
            delta_usage: dict[str, Any] = {"output_tokens": max(1, total * n // style.usage_deltas)}
            if last:
                delta_usage = {**usage}  # cumulative: repeats input and cache counts
            stop = {
                "stop_reason": reply.stop_reason if last else None,
                "stop_sequence": reply.stop_sequence if last else None,
            }
            out.append(
                ("message_delta", {"type": "message_delta", "delta": stop, "usage": delta_usage})
            )
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _encode(self, events: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
        style = self.style
        rotation = ["\n", "\r\n", "\r"]
        colon = ": " if style.space else ":"
        pieces: list[bytes] = []
        for n, (name, payload) in enumerate(events):
            mixed = style.line_ending == "mixed"
            end = rotation[n % 3] if mixed else _ENDINGS[style.line_ending]
            if style.multiline_data:
                data = json.dumps(payload, ensure_ascii=False, indent=1)
            else:
                data = json.dumps(payload, ensure_ascii=False)
            lines = [f": keep-alive{end}"] if style.comments else []
            lines.append(f"event{colon}{name}{end}")
            lines.extend(f"data{colon}{line}{end}" for line in data.split("\n"))
            lines.append(end)
            pieces.append("".join(lines).encode())
        return pieces

    def _stream(self, reply: Reply, message_id: str, headers: dict[str, str]) -> FakeResponse:
        events = self.events(reply, message_id)
        if self.error_after is not None:
            deltas = [i for i, (name, _) in enumerate(events) if name == "content_block_delta"]
            cut = deltas[min(self.error_after, len(deltas)) - 1] + 1 if self.error_after else 1
            message = "Overloaded" if self.error_type == "overloaded_error" else "Internal error"
            error = {"type": "error", "error": {"type": self.error_type, "message": message}}
            events = [*events[:cut], ("error", error)]
        if self.cut_after is not None:
            events = events[: self.cut_after]
        pieces = self._encode(events)
        if self.raw_after is not None:
            count, data = self.raw_after
            pieces = [*pieces[:count], data]
        if self.style.coalesce:
            pieces = [b"".join(pieces)]
        elif self.style.piece_size:
            pieces = split_bytes(b"".join(pieces), self.style.piece_size)
        writes = [Write(p, self.style.delay if i else 0.0) for i, p in enumerate(pieces)]
        return FakeResponse(
            200,
            {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                **headers,
            },
            writes,
            chunked=True,
            header_delay=self.header_delay,
            reset_after=self.reset_after,
        )
