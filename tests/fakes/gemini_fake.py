"""A fake Gemini API (generativelanguage) on loopback, speaking reference §5 byte for byte.

Routes: POST /{version}/models/{model}:generateContent, :streamGenerateContent (SSE with
`alt=sse`, CRLF line ends, no terminator; a JSON array without it), :embedContent and
:batchEmbedContents. Auth: `x-goog-api-key` (or `?key=`); a missing key gets 401
UNAUTHENTICATED and a wrong one 400 INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID, both
in the google.rpc.Status envelope, pretty-printed like Google's.

What it answers (deterministic):
- the last user turn's text (joined with spaces), plus one `[mime inline N bytes]` or
  `[mime url]` marker per image;
- with function declarations: one functionCall per declared function whose name appears
  in the last user text (mode ANY: at least the first allowed one), arguments filled from
  the parameter schema with that text; all calls in one chunk with finishReason STOP;
- after functionResponse parts: "name returned {json}" for each;
- JSON mode (`responseMimeType: application/json`): a JSON text built from
  `responseJsonSchema`, or {"echo": text};
- `thinkingConfig.includeThoughts`: a thought part first;
- `maxOutputTokens` cuts the reply (finishReason MAX_TOKENS), `stopSequences` cut it;
- `candidateCount` N: N candidates (the n-th says "<text> (n)"); `responseLogprobs`: a
  `logprobsResult` per candidate (and per stream chunk), with `logprobs` alternatives;
- a last user text starting with "unsafe" is a blocked prompt (`promptFeedback` with
  blockReason SAFETY and safetyRatings, no candidates); every candidate carries
  `safetyRatings`, and one whose text mentions "cite" `citationMetadata`;
- models whose name contains "missing" are 404 NOT_FOUND; embedding models ("embed" in
  the name) only embed and chat models only chat, as upstream.

Usage counts words: prompt = words of every text part (+1 per image), candidates = words
of the reply, thoughts = words of the thought. In streams every chunk carries the
running usage (cumulative, never to be summed).

Edge cases (§10) come from `next_shape` (applies to the next streamed answer) and from
the builders below, queued with `fake.script(...)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse, Write, split_bytes

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_WORDS = re.compile(r"\s*\S+")
TYPE = "type.googleapis.com/google.rpc."


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def words(text: str) -> list[str]:
    """Tokens with their leading white space, so that joining them gives the text back."""
    found: list[str] = _WORDS.findall(text)
    tail = text[sum(map(len, found)) :]
    if tail:
        if found:
            found[-1] += tail
        else:
            found.append(tail)
    return found


def count(text: str) -> int:
    return len(_WORDS.findall(text))


# --- wire builders ----------------------------------------------------------------------


def status_body(code: int, status: str, message: str, details: list[Any] | None = None) -> Any:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    code: int,
    status: str,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
    wrapped: bool = False,
    pretty: bool = True,
    http_status: int | None = None,
) -> FakeResponse:
    """A google.rpc.Status error, pretty-printed over many lines as Google sends it, or
    wrapped in a one-element list as on non-SSE streams and some proxies."""
    body: Any = status_body(code, status, message, details)
    if wrapped:
        body = [body]
    data = json.dumps(body, indent=2 if pretty else None).encode() + (b"\n" if pretty else b"")
    return FakeResponse(
        http_status or code,
        {"content-type": "application/json; charset=UTF-8", **(headers or {})},
        [Write(data)],
    )


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": TYPE + "RetryInfo", "retryDelay": delay}


def rate_limited(
    retry_delay: str | None = "27s", headers: dict[str, str] | None = None
) -> FakeResponse:
    details: list[Any] = [
        {
            "@type": TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                }
            ],
        },
        {
            "@type": TYPE + "Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if retry_delay is not None:
        details.append(retry_info(retry_delay))
    return error_response(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        details,
        headers,
    )


def api_key_invalid_body() -> Any:
    return status_body(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": TYPE + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": TYPE + "LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            },
        ],
    )


def context_too_long(tokens: int = 1_200_000, limit: int = 1_048_576) -> FakeResponse:
    return error_response(
        400,
        "INVALID_ARGUMENT",
        f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit}).",
    )


def overloaded() -> FakeResponse:
    return error_response(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def not_found(model: str, method: str, version: str = "v1beta") -> FakeResponse:
    return error_response(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


def html_error(status: int = 502) -> FakeResponse:
    page = (
        f"<!DOCTYPE html>\n<html lang=en><title>Error {status} (Server Error)!!1</title>"
        "<p><b>" + str(status) + ".</b> <ins>That's an error.</ins></p></html>\n"
    )
    return FakeResponse.raw(page.encode(), status=status, content_type="text/html; charset=UTF-8")


def chunk(
    parts: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    response_id: str = "resp-1",
    model: str = "gemini-2.5-flash",
    **candidate_fields: Any,
) -> dict[str, Any]:
    """One GenerateContentResponse (a stream chunk or a whole answer)."""
    body: dict[str, Any] = {}
    if parts is not None or finish is not None:
        candidate: dict[str, Any] = {}
        if parts is not None:
            candidate["content"] = {"role": "model", "parts": parts}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate.update(candidate_fields)
        candidate["index"] = 0
        body["candidates"] = [candidate]
    if usage is not None:
        body["usageMetadata"] = usage
    body["modelVersion"] = model
    body["responseId"] = response_id
    return body


SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
]


def candidate_facts(text: str, logprobs: int | None) -> dict[str, Any]:
    """safetyRatings, and citationMetadata and logprobsResult where they apply (§5.3)."""
    facts: dict[str, Any] = {"safetyRatings": SAFETY_RATINGS}
    if "cite" in text:
        facts["citationMetadata"] = {
            "citationSources": [{"startIndex": 0, "endIndex": 4, "uri": "https://example.org/"}]
        }
    if logprobs is not None:
        tokens = words(text)
        facts["logprobsResult"] = {
            "topCandidates": [
                {
                    "candidates": [
                        {"token": f"{t}~{k}", "logProbability": -1.0 * (k + 1)}
                        for k in range(logprobs)
                    ]
                }
                for t in tokens
            ],
            "chosenCandidates": [
                {"token": t, "logProbability": -0.25 * (n + 1)} for n, t in enumerate(tokens)
            ],
        }
    return facts


def blocked_prompt(prompt: int, model: str, response_id: str) -> dict[str, Any]:
    """A prompt blocked before any candidate (§5.3): HTTP 200, no candidates."""
    return {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        },
        "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
        "modelVersion": model,
        "responseId": response_id,
    }


def usage_metadata(
    prompt: int, candidates: int = 0, thoughts: int = 0, cached: int = 0
) -> dict[str, int]:
    meta = {"promptTokenCount": prompt}
    if cached:
        meta["cachedContentTokenCount"] = cached
    if candidates:
        meta["candidatesTokenCount"] = candidates
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    meta["totalTokenCount"] = prompt + candidates + thoughts
    return meta


@dataclass
class StreamShape:
    """How a stream is framed on the wire (reference §10)."""

    line_ending: str = "\r\n"  # Google's; "\n", "\r" or "mixed" for the edge cases
    space: bool = True  # `data: ` vs `data:`
    comments: bool = False  # `: keep-alive` before and between events
    multiline: bool = False  # each JSON payload spread over several data: lines
    split: int | None = None  # cut the body into writes of this many bytes
    coalesce: bool = False  # the whole body in one write
    delay: float = 0.0  # seconds between writes
    first_byte_delay: float = 0.0  # seconds before the first body byte (headers are sent)
    trailing_usage: bool = False  # one more usage-only chunk after the finishReason chunk
    stop_after: int | None = None  # send only this many events, then end cleanly (cut)
    reset_after: int | None = None  # send this many events, then reset the connection


def sse_events(payloads: list[Any], shape: StreamShape) -> list[bytes]:
    """Each payload (JSON value, or a raw str) as one SSE event, framed per `shape`."""
    events: list[bytes] = []
    endings = ["\r\n", "\n", "\r"]
    for number, payload in enumerate(payloads):
        text = payload if isinstance(payload, str) else json.dumps(payload)
        if shape.multiline and not isinstance(payload, str):
            text = json.dumps(payload, indent=1)
        end = endings[number % 3] if shape.line_ending == "mixed" else shape.line_ending
        prefix = "data: " if shape.space else "data:"
        lines = [prefix + line for line in text.split("\n")]
        if shape.comments:
            lines.insert(0, ": keep-alive")
        events.append((end.join(lines) + end + end).encode())
    return events


def stream_response(payloads: list[Any], shape: StreamShape | None = None) -> FakeResponse:
    """An `alt=sse` response for these chunks (the server closes after the last one)."""
    shape = shape or StreamShape()
    events = sse_events(payloads, shape)
    cut = shape.reset_after if shape.reset_after is not None else shape.stop_after
    if cut is not None:
        events = events[:cut]
    if shape.comments:
        end = "\r\n" if shape.line_ending == "mixed" else shape.line_ending
        events.insert(0, (": PROCESSING" + end + end).encode())
    pieces = events
    if shape.coalesce:
        pieces = [b"".join(events)]
    elif shape.split:
        pieces = split_bytes(b"".join(events), shape.split)
    writes = [Write(p, shape.delay if i else shape.first_byte_delay) for i, p in enumerate(pieces)]
    return FakeResponse(
        200,
        {"content-type": "text/event-stream", "x-content-type-options": "nosniff"},
        writes,
        chunked=True,
        reset_after=len(writes) if shape.reset_after is not None else None,
    )


# --- the fake ---------------------------------------------------------------------------


@dataclass
class Answer:
    """What the fake decided to say to one generateContent request."""

    text: str = ""
    thought: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "STOP"
    prompt_tokens: int = 0
    blocked: bool = False
    candidates: int = 1
    logprobs: int | None = None  # None: not asked; else the alternatives per position
    cached_tokens: int = 0  # of prompt_tokens, read from the implicit cache

    @property
    def candidate_tokens(self) -> int:
        return count(self.text) + sum(count(json.dumps(c["args"])) for c in self.calls)


def _example(schema: Any, text: str) -> Any:
    if not isinstance(schema, dict):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _example(sub, text) for name, sub in sorted(props.items())}
    if kind == "array":
        return [_example(schema.get("items", {}), text)]
    if kind == "integer":
        return count(text)
    if kind == "number":
        return float(count(text))
    if kind == "boolean":
        return bool(text)
    return text


def embedding_vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 4) for i in range(dimensions)]


class GeminiFake(FakeHttpServer):
    def __init__(self, api_key: str = "gemini-test-key", api_version: str = "v1beta") -> None:
        super().__init__(self._handle)
        self.api_key = api_key
        self.api_version = api_version
        self.next_shape: StreamShape | None = None
        self.answers = 0
        self.models: tuple[str, ...] = ("gemini-2.5-flash", "text-embedding-004")
        # Implicit caching: prompts seen before (digests of system + contents); a later
        # prompt that starts with one of them reads that prefix from the cache.
        self.seen_prompts: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"{self.url}/{self.api_version}"

    # routing and auth

    def route(self, request: FakeRequest) -> tuple[str, str] | FakeResponse:
        """(model, method) of an authorized request, or the error to answer with."""
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return html_error(404)
        version, model, method = match["version"], match["model"], match["method"]
        key = request.headers.get("x-goog-api-key") or request.query.get("key", [""])[0]
        if not key:
            return error_response(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
            )
        if key != self.api_key:
            body = json.dumps(api_key_invalid_body(), indent=2).encode() + b"\n"
            return FakeResponse(
                400, {"content-type": "application/json; charset=UTF-8"}, [Write(body)]
            )
        if version != self.api_version:
            return html_error(404)
        return model, method

    def _handle(self, request: FakeRequest) -> FakeResponse:
        if request.method == "GET" and request.path == f"/{self.api_version}/models":
            return self._list_models(request)
        routed = self.route(request)
        if isinstance(routed, FakeResponse):
            return routed
        model, method = routed
        version = self.api_version
        try:
            body = json.loads(request.body)
        except ValueError:
            return error_response(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if "missing" in model:
            return not_found(model, method, version)
        embedding_model = "embed" in model
        if method in ("generateContent", "streamGenerateContent"):
            if embedding_model:
                return not_found(model, method, version)
            problem = self._check_chat(body)
            if problem:
                return error_response(400, "INVALID_ARGUMENT", problem)
            answer = self.answer(body)
            self.answers += 1
            response_id = f"fake-{self.answers}"
            if method == "generateContent":
                return self._whole(answer, model, response_id)
            alt_sse = request.query.get("alt") == ["sse"]
            return self._stream(answer, model, response_id, alt_sse)
        if method == "countTokens":
            return self._count_tokens(body)
        if method in ("embedContent", "batchEmbedContents", "predict"):
            if not embedding_model:
                return not_found(model, method, version)
            return self._embed(body, model, method)
        return html_error(404)

    def _list_models(self, request: FakeRequest) -> FakeResponse:
        """`models.list`: Model resources named "models/<id>"."""
        key = request.headers.get("x-goog-api-key") or request.query.get("key", [""])[0]
        if key != self.api_key:
            return error_response(
                403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"
            )
        models = [
            {
                "name": f"models/{name}",
                "version": "001",
                "displayName": name.replace("-", " ").title(),
                "description": f"The {name} model.",
                "inputTokenLimit": 2048 if "embed" in name else 1048576,
                "outputTokenLimit": 1 if "embed" in name else 65536,
                "supportedGenerationMethods": (
                    ["embedContent", "batchEmbedContents"]
                    if "embed" in name
                    else ["generateContent", "countTokens"]
                ),
            }
            for name in self.models
        ]
        return FakeResponse.json({"models": models})

    def count_request(self, body: Any) -> Any:
        """The GenerateContentRequest a countTokens body counts (Gemini API: `contents`
        alone, or a whole `generateContentRequest`)."""
        if isinstance(body, dict) and "generateContentRequest" in body:
            return body["generateContentRequest"]
        if isinstance(body, dict) and ("systemInstruction" in body or "tools" in body):
            return None  # the Gemini API takes these only inside generateContentRequest
        return body

    def _count_tokens(self, body: Any) -> FakeResponse:
        counted = self.count_request(body)
        if counted is None:
            return error_response(
                400,
                "INVALID_ARGUMENT",
                'Invalid JSON payload received. Unknown name "systemInstruction": Cannot find field.',
            )
        problem = self._check_chat(counted)
        if problem:
            return error_response(400, "INVALID_ARGUMENT", problem)
        return FakeResponse.json({"totalTokens": self.prompt_tokens(counted)})

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        contents = body["contents"]
        texts = [
            p["text"]
            for c in [body.get("systemInstruction") or {"parts": []}, *contents]
            for p in c["parts"]
            if "text" in p
        ]
        inline = sum(
            1 for c in contents for p in c["parts"] if "inlineData" in p or "fileData" in p
        )
        return sum(count(t) for t in texts) + inline

    def _cached_tokens(self, body: dict[str, Any]) -> int:
        """Implicit caching: the longest earlier prompt this one starts with is read
        from the cache; this prompt is remembered for later ones."""
        system = body.get("systemInstruction")
        contents = body["contents"]
        cached = 0
        for end in range(len(contents) - 1, 0, -1):
            prefix = {"systemInstruction": system, "contents": contents[:end]}
            if _digest(prefix) in self.seen_prompts:
                cached = self.prompt_tokens({**prefix, "systemInstruction": system})
                break
        self.seen_prompts.add(_digest({"systemInstruction": system, "contents": contents}))
        return cached

    @staticmethod
    def _check_chat(body: Any) -> str:
        contents = body.get("contents") if isinstance(body, dict) else None
        if not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for i, content in enumerate(contents):
            if content.get("role") not in ("user", "model"):
                return f"* GenerateContentRequest.contents[{i}].role: must be user or model"
            if not content.get("parts"):
                return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            for part in content["parts"]:
                response = part.get("functionResponse")
                if response is not None and not response.get("name"):
                    return f"* GenerateContentRequest.contents[{i}]: function_response.name is required"
                data = part.get("fileData")
                if data is not None and not data.get("mimeType"):
                    return (
                        f"* GenerateContentRequest.contents[{i}]: file_data.mime_type is required"
                    )
        return ""

    # chat

    def answer(self, body: dict[str, Any]) -> Answer:
        contents = body["contents"]
        texts = [
            p["text"]
            for c in [body.get("systemInstruction") or {"parts": []}, *contents]
            for p in c["parts"]
            if "text" in p
        ]
        images = sum(
            1 for c in contents for p in c["parts"] if "inlineData" in p or "fileData" in p
        )
        answer = Answer(
            prompt_tokens=sum(count(t) for t in texts) + images,
            cached_tokens=self._cached_tokens(body),
        )
        config = body.get("generationConfig") or {}
        answer.candidates = int(config.get("candidateCount") or 1)
        if config.get("responseLogprobs"):
            answer.logprobs = int(config.get("logprobs") or 0)
        if (config.get("thinkingConfig") or {}).get("includeThoughts"):
            answer.thought = "Thinking it over."
        last = contents[-1]
        results = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        user_text = " ".join(p["text"] for p in last["parts"] if "text" in p)
        if results:
            answer.text = " ".join(
                f"{r['name']} returned {json.dumps(r['response'], separators=(',', ':'))}"
                for r in results
            )
            return answer
        if user_text.startswith("unsafe"):
            answer.blocked = True
            return answer
        answer.calls = self._calls(body, user_text)
        if answer.calls:
            return answer
        markers = []
        for part in last["parts"]:
            if "inlineData" in part:
                inline = part["inlineData"]
                size = len(base64.b64decode(inline["data"]))
                markers.append(f"[{inline['mimeType']} inline {size} bytes]")
            elif "fileData" in part:
                markers.append(f"[{part['fileData']['mimeType']} {part['fileData']['fileUri']}]")
        text = " ".join([user_text, *markers]) if markers else user_text
        if config.get("responseMimeType") == "application/json":
            schema = config.get("responseJsonSchema")
            value = _example(schema, user_text) if schema else {"echo": text}
            text = json.dumps(value)
        for stop in config.get("stopSequences", []):
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
        limit = config.get("maxOutputTokens")
        if limit is not None and count(text) > limit:
            text = "".join(words(text)[:limit])
            answer.finish = "MAX_TOKENS"
        answer.text = text
        return answer

    @staticmethod
    def _calls(body: dict[str, Any], user_text: str) -> list[dict[str, Any]]:
        declarations = [
            d for tool in body.get("tools", []) for d in tool.get("functionDeclarations", [])
        ]
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        mode = calling.get("mode", "AUTO")
        if not declarations or mode == "NONE":
            return []
        allowed = calling.get("allowedFunctionNames")
        if allowed:
            declarations = [d for d in declarations if d["name"] in allowed]
        named = set(re.findall(r"[A-Za-z0-9_-]+", user_text))
        chosen = [d for d in declarations if d["name"] in named]
        if not chosen and mode == "ANY":
            chosen = declarations[:1]
        return [
            {
                "name": d["name"],
                "args": _example(d.get("parameters") or {"type": "object"}, user_text),
            }
            for d in chosen
        ]

    @staticmethod
    def _parts(answer: Answer) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if answer.thought:
            parts.append({"text": answer.thought, "thought": True})
        for number, call in enumerate(answer.calls):
            part: dict[str, Any] = {"functionCall": call}
            if number == 0:
                part["thoughtSignature"] = "c2lnbmF0dXJl"
            parts.append(part)
        if answer.text:
            parts.append({"text": answer.text})
        return parts

    def _whole(self, answer: Answer, model: str, response_id: str) -> FakeResponse:
        if answer.blocked:
            return FakeResponse.json(blocked_prompt(answer.prompt_tokens, model, response_id))
        extra: dict[str, Any] = {}
        if answer.calls:
            extra["finishMessage"] = "Model generated function call(s)."
        body = chunk(
            self._parts(answer),
            answer.finish,
            usage_metadata(
                answer.prompt_tokens,
                answer.candidate_tokens,
                count(answer.thought),
                answer.cached_tokens,
            ),
            response_id,
            model,
            **extra,
            **candidate_facts(answer.text, answer.logprobs),
        )
        for index in range(1, answer.candidates):
            text = f"{answer.text} ({index})"
            body["candidates"].append(
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": answer.finish,
                    "index": index,
                    **candidate_facts(text, answer.logprobs),
                }
            )
        return FakeResponse.json(body)

    def _chunks(self, answer: Answer, model: str, response_id: str) -> list[dict[str, Any]]:
        prompt, thoughts = answer.prompt_tokens, count(answer.thought)
        out: list[dict[str, Any]] = []
        if answer.blocked:
            return [blocked_prompt(prompt, model, response_id)]
        if answer.thought:
            out.append(
                chunk(
                    [{"text": answer.thought, "thought": True}],
                    usage=usage_metadata(prompt, 0, thoughts, answer.cached_tokens),
                    response_id=response_id,
                    model=model,
                )
            )
        if answer.calls:
            parts = self._parts(Answer(calls=answer.calls))
            out.append(
                chunk(
                    parts,
                    "STOP",
                    usage_metadata(prompt, answer.candidate_tokens, thoughts, answer.cached_tokens),
                    response_id,
                    model,
                    finishMessage="Model generated function call(s).",
                )
            )
            return out
        tokens = words(answer.text) or [""]
        produced = 0
        for number, token in enumerate(tokens):
            produced += count(token)
            last = number == len(tokens) - 1
            out.append(
                chunk(
                    [{"text": token}],
                    answer.finish if last else None,
                    usage_metadata(prompt, produced, thoughts, answer.cached_tokens),
                    response_id,
                    model,
                    **candidate_facts(token, answer.logprobs),
                )
            )
        return out

    def _stream(self, answer: Answer, model: str, response_id: str, alt_sse: bool) -> FakeResponse:
        payloads: list[Any] = self._chunks(answer, model, response_id)
        if not alt_sse:  # without alt=sse: one JSON array, streamed progressively
            data = ("[" + ",\r\n".join(json.dumps(p) for p in payloads) + "]").encode()
            return FakeResponse(
                200, {"content-type": "application/json; charset=UTF-8"}, [Write(data)]
            )
        shape, self.next_shape = self.next_shape or StreamShape(), None
        if shape.trailing_usage:
            final = payloads[-1]["usageMetadata"]
            payloads.append(chunk(None, None, final, response_id, model))
        return stream_response(payloads, shape)

    # embeddings

    def _embed(self, body: Any, model: str, method: str) -> FakeResponse:
        if method == "predict":
            return html_error(404)  # Vertex AI only
        if method == "embedContent":
            return FakeResponse.json({"embedding": self._one(body)})
        requests = body.get("requests") or []
        for i, item in enumerate(requests):
            if item.get("model") != f"models/{model}":
                return error_response(
                    400,
                    "INVALID_ARGUMENT",
                    f"* BatchEmbedContentsRequest.requests[{i}].model: model must match "
                    f"the request model models/{model}",
                )
        return FakeResponse.json({"embeddings": [self._one(item) for item in requests]})

    @staticmethod
    def _one(item: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(p.get("text", "") for p in item["content"]["parts"])
        return {"values": embedding_vector(text, int(item.get("outputDimensionality", 8)))}
