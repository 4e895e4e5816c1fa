"""A fake Ollama server speaking the native API (reference §6) on a real loopback socket.

Default behaviour, per request:
- Auth: when the fake has an `api_key`, `Authorization: Bearer <key>` is required;
  otherwise 401 `{"error":"unauthorized"}` (Ollama's string envelope).
- `POST /api/chat`: unknown model → 404 `{"error":"model 'x' not found"}`; images must be
  raw base64 (400 otherwise). With tools and a user turn last, the model calls every
  tool (all calls in one line, arguments as a JSON object, no ids unless
  `tool_call_ids`); after a tool turn it answers "<tool> returned <content>"; otherwise
  it echoes the last user text. `format` "json" / a schema gives a JSON object,
  `think: true` adds `thinking`, `options.num_predict` cuts the reply (done_reason
  "length"). `stream` defaults to true as in Ollama: NDJSON lines, one per word, then
  the `done: true` line with the metrics (zero counts are omitted, as Go's omitempty does).
- `POST /api/embed`: one deterministic vector per input (`dimensions` honoured).
- Anything else: 404 `404 page not found` as text/plain (gin's default).

Edge cases (§10) are scripted with `fake.script(...)` from the builders below: NDJSON
bodies with any line ending, blank lines, no final newline, split into pieces of any
size (inside JSON and inside UTF-8 sequences) or coalesced into one write; mid-stream
`{"error": ...}` lines, truncation, resets, stalls, slow first byte, errors with
Retry-After, non-JSON and gzip bodies, and a 200 `application/json` error.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
from typing import Any

from tests.fakes.http_server import (
    FakeHttpServer,
    FakeRequest,
    FakeResponse,
    FakeUpstream,
    Write,
    split_bytes,
)

NDJSON = "application/x-ndjson"
CREATED_AT = "2026-01-01T00:00:00.{:03d}Z"


def created_at(n: int) -> str:
    return CREATED_AT.format(n % 1000)


def metrics(prompt_eval_count: int, eval_count: int) -> dict[str, Any]:
    """The Metrics of a final line; zero counts are left out (`omitempty`)."""
    out: dict[str, Any] = {
        "total_duration": 4883583458,
        "load_duration": 1334875,
    }
    if prompt_eval_count:
        out["prompt_eval_count"] = prompt_eval_count
    out["prompt_eval_duration"] = 342546000
    if eval_count:
        out["eval_count"] = eval_count
    out["eval_duration"] = 45359900
    return out


def chat_line(
    content: str = "",
    *,
    model: str = "llama3.2",
    n: int = 0,
    thinking: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
    done_reason: str | None = None,
    prompt_eval_count: int = 0,
    eval_count: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ChatResponse object as Ollama writes it (stream line or whole body)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    line: dict[str, Any] = {"model": model, "created_at": created_at(n), "message": message}
    if done:
        line["done"] = True
        if done_reason is not None:
            line["done_reason"] = done_reason
        line.update(metrics(prompt_eval_count, eval_count))
    else:
        line["done"] = False
    line.update(extra or {})
    return line


def tool_call(
    name: str, arguments: dict[str, Any], index: int, call_id: str = ""
) -> dict[str, Any]:
    call: dict[str, Any] = {
        "function": {"index": index, "name": name, "arguments": arguments},
    }
    if call_id:
        call = {"id": call_id, **call}
    return call


def ndjson(
    lines: list[Any], line_ending: str = "\n", final_newline: bool = True, blank_lines: bool = False
) -> bytes:
    """Encodes objects as NDJSON (Go's json encoding: compact, non-ASCII kept)."""
    encoded = [json.dumps(line, separators=(",", ":"), ensure_ascii=False) for line in lines]
    separator = line_ending + (line_ending if blank_lines else "")
    text = separator.join(encoded)
    if final_newline:
        text += line_ending
    return text.encode()


def ndjson_response(
    body: bytes, piece_size: int | None = None, delay: float = 0.0, **kwargs: Any
) -> FakeResponse:
    """A 200 NDJSON stream, in one write or cut into `piece_size` pieces."""
    pieces = split_bytes(body, piece_size) if piece_size else [body]
    return FakeResponse.stream(pieces, content_type=NDJSON, delay=delay, **kwargs)


def line_writes(lines: list[Any], **kwargs: Any) -> FakeResponse:
    """A 200 NDJSON stream with one write per line (as Ollama flushes them)."""
    return FakeResponse.stream([ndjson([line]) for line in lines], content_type=NDJSON, **kwargs)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> FakeResponse:
    """Ollama's error envelope: `{"error":"<string>"}` with the status."""
    return FakeResponse.json({"error": message}, status=status, headers=headers)


def gzip_error_response(status: int, message: str) -> FakeResponse:
    data = gzip.compress(json.dumps({"error": message}).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    return FakeResponse(status, headers, [Write(data)])


def text_lines(
    words: list[str],
    done_reason: str | None = "stop",
    prompt_eval_count: int = 0,
    model: str = "llama3.2",
) -> list[dict[str, Any]]:
    """Content lines, one per word, then the final line."""
    lines = [chat_line(word, model=model, n=i) for i, word in enumerate(words)]
    lines.append(
        chat_line(
            model=model,
            n=len(words),
            done=True,
            done_reason=done_reason,
            prompt_eval_count=prompt_eval_count,
            eval_count=len(words),
        )
    )
    return lines


def embedding(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[k % len(digest)] / 255 * 2 - 1, 4) for k in range(dimensions)]


def _words(text: str) -> list[str]:
    return text.split()


def _example(schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type")
    if kind == "object":
        return {k: _example(v, text) for k, v in schema.get("properties", {}).items()}
    if kind == "integer":
        return len(_words(text))
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(schema.get("items", {}), text)]
    return text


class OllamaFake(FakeUpstream):
    """`async with OllamaFake(api_key="k") as fake:` then point a provider at `fake.url`."""

    def __init__(
        self,
        api_key: str | None = None,
        models: tuple[str, ...] = ("llama3.2", "nomic-embed-text"),
        dimensions: int = 4,
        tool_call_ids: bool = False,
    ) -> None:
        self.api_key = api_key
        self.models = models
        self.dimensions = dimensions
        self.tool_call_ids = tool_call_ids
        self.server = FakeHttpServer(self.handle)

    def reset(self) -> None:
        self.server.requests.clear()
        self.server.scripted.clear()

    # Routing -------------------------------------------------------------------------

    def handle(self, request: FakeRequest) -> FakeResponse:
        expected = f"Bearer {self.api_key}"
        if self.api_key is not None and request.headers.get("authorization") != expected:
            return error_response(401, "unauthorized")
        if request.method == "POST" and request.path == "/api/chat":
            return self._with_body(request, self.chat)
        if request.method == "POST" and request.path == "/api/embed":
            return self._with_body(request, self.embed)
        if request.method == "GET" and request.path == "/api/tags":
            return FakeResponse.json({"models": [self._tag(name) for name in self.models]})
        return FakeResponse.raw(b"404 page not found", status=404)

    @staticmethod
    def _tag(name: str) -> dict[str, Any]:
        """One local model as `GET /api/tags` lists it (names carry their tag)."""
        full = name if ":" in name else f"{name}:latest"
        family = name.split(":")[0].split("-")[0]
        return {
            "name": full,
            "model": full,
            "modified_at": "2026-01-01T00:00:00.000000000Z",
            "size": 2019393189,
            "digest": hashlib.sha256(full.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
        }

    @staticmethod
    def _with_body(request: FakeRequest, answer: Any) -> FakeResponse:
        try:
            body = request.json()
        except ValueError:
            return error_response(400, "invalid character looking for beginning of value")
        if not isinstance(body, dict):
            return error_response(400, "json: cannot unmarshal array into Go value")
        response: FakeResponse = answer(body)
        return response

    def _model_error(self, body: dict[str, Any]) -> FakeResponse | None:
        model = body.get("model")
        if not model:
            return error_response(400, "model is required")
        if model not in self.models:
            return error_response(404, f"model '{model}' not found")
        return None

    # Chat ----------------------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> FakeResponse:
        failure = self._model_error(body)
        if failure is not None:
            return failure
        messages = body.get("messages") or []
        for message in messages:
            for image in message.get("images") or []:
                try:
                    base64.b64decode(image, validate=True)
                except (binascii.Error, ValueError):
                    return error_response(400, "illegal base64 data at input byte 0")
        model = body["model"]
        options = body.get("options") or {}
        last = messages[-1] if messages else {}
        user_turns = [m for m in messages if m.get("role") == "user"]
        user_text = user_turns[-1].get("content", "") if user_turns else ""
        prompt_tokens = sum(len(_words(m.get("content", ""))) for m in messages)
        calls: list[dict[str, Any]] = []
        if last.get("role") == "tool":
            text = f"{last.get('tool_name', '?')} returned {last.get('content', '')}"
        elif body.get("tools") and last.get("role") == "user":
            text = ""
            for index, tool in enumerate(body["tools"]):
                function = tool["function"]
                parameters = function.get("parameters", {})
                # The first required property (schema maps have no reliable order).
                required = parameters.get("required") or sorted(parameters.get("properties", {}))
                key = required[0] if required else "input"
                call_id = f"call_fake{index}" if self.tool_call_ids else ""
                calls.append(tool_call(function["name"], {key: user_text}, index, call_id))
        else:
            text = user_text
            images = len(last.get("images") or [])
            if images:
                text = f"[{images} image(s)] {text}"
        fmt = body.get("format")
        if fmt == "json" and not calls:
            text = json.dumps({"echo": text})
        elif isinstance(fmt, dict) and not calls:
            text = json.dumps(_example(fmt, text))
        words = [w if i == 0 else f" {w}" for i, w in enumerate(_words(text))]
        done_reason = "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 < limit < len(words):
            words = words[:limit]
            done_reason = "length"
        thinking = f"Thinking about: {user_text}" if body.get("think") else None
        eval_count = len(words) + len(calls) * 5 + (len(_words(thinking)) if thinking else 0)
        if not body.get("stream", True):
            whole = chat_line(
                "".join(words),
                model=model,
                thinking=thinking,
                tool_calls=calls or None,
                done=True,
                done_reason=done_reason,
                prompt_eval_count=prompt_tokens,
                eval_count=eval_count,
            )
            return FakeResponse.json(whole)
        lines: list[dict[str, Any]] = []
        if thinking:
            for word in _words(thinking):
                lines.append(chat_line(model=model, n=len(lines), thinking=word + " "))
        lines.extend(chat_line(word, model=model, n=len(lines)) for word in words)
        if calls:
            lines.append(chat_line(model=model, n=len(lines), tool_calls=calls))
        lines.append(
            chat_line(
                model=model,
                n=len(lines),
                done=True,
                done_reason=done_reason,
                prompt_eval_count=prompt_tokens,
                eval_count=eval_count,
            )
        )
        return line_writes(lines)

    # Embeddings ----------------------------------------------------------------------

    def embed(self, body: dict[str, Any]) -> FakeResponse:
        failure = self._model_error(body)
        if failure is not None:
            return failure
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            return error_response(400, "invalid input type")
        dimensions = body.get("dimensions") or self.dimensions
        return FakeResponse.json(
            {
                "model": body["model"],
                "embeddings": [embedding(text, dimensions) for text in inputs],
                "total_duration": 14143917,
                "load_duration": 1019500,
                "prompt_eval_count": sum(len(_words(text)) for text in inputs),
            }
        )
