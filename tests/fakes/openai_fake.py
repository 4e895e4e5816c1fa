"""A fake OpenAI Chat Completions / Embeddings upstream (also Azure OpenAI and
OpenAI-compatible servers), speaking the wire format of reference §2, §3 and §7.

Default behaviour: echo the last user text; when tools are offered, call every tool
whose name appears in the last user text (or the first tool when tool_choice is
"required"); when the conversation ends with tool results, report them. Streams come
as SSE chunks ending in `data: [DONE]`, with a usage chunk when include_usage is set.
Edge cases are scripted with the builders below and `fake.script(...)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http_server import FakeRequest, FakeResponse, Write, split_bytes
from tests.fakes.rate_limits import FakeQuota

CREATED = 1767225600


@dataclass
class OpenAIFakeConfig:
    key: str = "sk-test"
    auth: str = "bearer"  # "bearer", "azure" (api-key or bearer), "header:<name>", "none"
    azure_deployments: tuple[str, ...] = ("gpt-4o-deploy",)
    request_id: str = "req_fake_1"
    stream_piece: int = 0  # >0: cut every stream body into pieces of this many bytes
    extra_headers: dict[str, str] = field(default_factory=dict)
    # False: tool calls (whole and streamed) come without an `id`, as some
    # OpenAI-compatible servers send them.
    tool_call_ids: bool = True
    # The completion `id`: "fixed" ("chatcmpl-fake" on every response), "unique" (a new
    # one per response, as OpenAI and vLLM send) or "absent" (no `id` key at all).
    completion_ids: str = "fixed"
    # Azure's content-filter annotations (reference §3.3): streams open with a
    # `choices: []` chunk carrying prompt_filter_results; choices carry
    # content_filter_results.
    azure_annotations: bool = False
    # False: no `usage` on whole answers, and no usage chunk on streams even when
    # stream_options.include_usage asks for one (llama.cpp ignores stream_options).
    reports_usage: bool = True
    # The provider's own rate limit: enforced with 429s, and reported in x-ratelimit-*
    # headers on every response (unless its send_headers is False).
    quota: FakeQuota | None = None
    # What `GET /v1/models` lists.
    models: tuple[str, ...] = ("gpt-4o-mini", "text-embedding-3-small")


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def plan(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(reply text, tool calls) for a request body."""
    messages = body["messages"]
    if messages and messages[-1].get("role") == "tool":
        results = [m for m in messages if m.get("role") == "tool"]
        return " ".join(f"tool said {m['content']}" for m in results), []
    user_text = _last_user_text(messages)
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    if tools and choice != "none":
        names = [t["function"]["name"] for t in tools]
        if isinstance(choice, dict):
            chosen = [choice["function"]["name"]]
        else:
            chosen = [n for n in names if re.search(rf"\b{re.escape(n)}\b", user_text)]
            if not chosen and choice == "required":
                chosen = names[:1]
        if chosen:
            calls = [
                {
                    "id": f"call_{i}_{name}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": json.dumps({"text": user_text, "n": i}),
                    },
                }
                for i, name in enumerate(chosen)
            ]
            return "", calls
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        return json.dumps({"echo": user_text}), []
    return user_text, []


REFUSAL = "I can't help with that."
# Reasoning tokens a reasoning model spends per `reasoning_effort`.
REASONING_TOKENS = {"low": 4, "medium": 8, "high": 16}


def refuses(body: dict[str, Any]) -> bool:
    """The model refuses when the last user text starts with "refuse"."""
    return _last_user_text(body["messages"]).startswith("refuse")


def token_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """`logprobs.content` entries (§2.3) for the words of `text`, deterministic."""
    out = []
    for n, token in enumerate(re.findall(r"\s*\S+", text)):
        entry: dict[str, Any] = {
            "token": token,
            "logprob": -0.5 * (n + 1),
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": f"{token}~{k}", "logprob": -1.0 * (k + 1), "bytes": None}
                for k in range(top)
            ],
        }
        out.append(entry)
    return out


def logprobs_for(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    return {"content": token_logprobs(text, int(body.get("top_logprobs") or 0)), "refusal": None}


def usage_for(body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(words(_content_text(m.get("content"))) for m in body["messages"])
    completion = words(text) + sum(words(c["function"]["arguments"]) for c in calls)
    reasoning = REASONING_TOKENS.get(str(body.get("reasoning_effort")), 0)
    completion += reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


def completion(body: dict[str, Any]) -> dict[str, Any]:
    text, calls = plan(body)
    refused = refuses(body)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if refused:
        text, calls = "", []
        message = {"role": "assistant", "content": None, "refusal": REFUSAL}
    if calls:
        message["tool_calls"] = calls
    choices = []
    for index in range(int(body.get("n") or 1)):
        choice_message = dict(message)
        if index and message["content"]:
            choice_message["content"] = f"{text} ({index})"
        choices.append(
            {
                "index": index,
                "message": choice_message,
                "logprobs": logprobs_for(body, choice_message["content"] or ""),
                "finish_reason": "tool_calls" if calls else "stop",
            }
        )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": CREATED,
        "model": body["model"],
        "choices": choices,
        "usage": usage_for(body, text, calls),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def chunk(
    model: str, delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
        "choices": choices,
        **extra,
    }


def stream_chunks(body: dict[str, Any], fragment: int = 5) -> list[dict[str, Any]]:
    """The chunks a real server sends for this request, usage chunk included if asked."""
    model = body["model"]
    text, calls = plan(body)
    chunks = [
        chunk(model, {"role": "assistant", "content": "" if not calls else None, "refusal": None})
    ]
    if refuses(body):
        text, calls = "", []
        for piece in re.findall(r"\s*\S+", REFUSAL):
            chunks.append(chunk(model, {"refusal": piece}))
    for piece in re.findall(r"\s*\S+", text) or ([text] if text else []):
        piece_chunk = chunk(model, {"content": piece})
        logprobs = logprobs_for(body, piece)
        if logprobs is not None:
            piece_chunk["choices"][0]["logprobs"] = logprobs
        chunks.append(piece_chunk)
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        opening = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk(model, {"tool_calls": [opening]}))
        for start in range(0, len(arguments), fragment):
            piece = {"index": index, "function": {"arguments": arguments[start : start + fragment]}}
            chunks.append(chunk(model, {"tool_calls": [piece]}))
    chunks.append(chunk(model, {}, "tool_calls" if calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append(chunk(model, None, usage=usage_for(body, text, calls)))
    return chunks


def sse_body(
    events: list[dict[str, Any] | str], line_ending: str = "\n", space: bool = True
) -> bytes:
    """`data:` events (dicts as JSON, strings as they are), each ended by a blank line."""
    prefix = "data: " if space else "data:"
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        out.append(f"{prefix}{data}{line_ending}{line_ending}")
    return "".join(out).encode()


def stream_response(body: bytes, piece: int = 0, **kwargs: Any) -> FakeResponse:
    pieces = split_bytes(body, piece) if piece else [body]
    return FakeResponse.stream(pieces, **kwargs)


SAFE_FILTER_RESULTS = {
    category: {"filtered": False, "severity": "safe"}
    for category in ("hate", "self_harm", "sexual", "violence")
}


def strip_tool_call_ids(payload: dict[str, Any]) -> dict[str, Any]:
    """Removes `id` from every tool call of a completion or chunk (in place)."""
    for choice in payload.get("choices") or []:
        for key in ("message", "delta"):
            for call in (choice.get(key) or {}).get("tool_calls") or []:
                call.pop("id", None)
    return payload


def azure_annotate(payload: dict[str, Any]) -> dict[str, Any]:
    """Adds Azure's content-filter results to a completion or chunk (in place)."""
    for choice in payload.get("choices") or []:
        choice["content_filter_results"] = SAFE_FILTER_RESULTS
    if payload.get("object") == "chat.completion":
        payload["prompt_filter_results"] = [
            {"prompt_index": 0, "content_filter_results": SAFE_FILTER_RESULTS}
        ]
    return payload


def azure_prompt_filter_chunk() -> dict[str, Any]:
    """The first chunk of an Azure stream: no choices, empty id and model (§3.3)."""
    return {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [
            {"prompt_index": 0, "content_filter_results": SAFE_FILTER_RESULTS}
        ],
    }


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A vector that is a function of the whole text (a hash), so that two texts, or
    two callers' inputs mixed up, never share one."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(((digest[i % 32] * (i // 32 + 1)) % 251) / 251.0, 6) for i in range(dimensions)]


class OpenAIFake:
    """The request handler; pass `fake.handle` to FakeHttpServer."""

    def __init__(self, config: OpenAIFakeConfig | None = None) -> None:
        self.config = config or OpenAIFakeConfig()
        self.completions_served = 0
        # Automatic prompt caching: prompts seen before; a later prompt that starts with
        # one of them reports that prefix's tokens as `cached_tokens`.
        self.seen_prompts: set[str] = set()

    def _cache(self, body: dict[str, Any], payloads: list[dict[str, Any]]) -> None:
        messages = body["messages"]
        cached = 0
        for end in range(len(messages) - 1, 0, -1):
            prefix = json.dumps(messages[:end], sort_keys=True)
            if prefix in self.seen_prompts:
                cached = sum(words(_content_text(m.get("content"))) for m in messages[:end])
                break
        self.seen_prompts.add(json.dumps(messages, sort_keys=True))
        for payload in payloads:
            usage = payload.get("usage")
            if usage:
                usage["prompt_tokens_details"]["cached_tokens"] = cached

    def _shape(self, payloads: list[dict[str, Any]]) -> None:
        """Applies the configured server quirks to one response's completion or chunks."""
        self.completions_served += 1
        for payload in payloads:
            if not self.config.tool_call_ids:
                strip_tool_call_ids(payload)
            if self.config.completion_ids == "absent":
                payload.pop("id", None)
            elif self.config.completion_ids == "unique":
                payload["id"] = f"chatcmpl-fake-{self.completions_served}"
            if self.config.azure_annotations:
                azure_annotate(payload)

    def _headers(self) -> dict[str, str]:
        quota = self.config.quota
        return {
            "x-request-id": self.config.request_id,
            "apim-request-id": self.config.request_id,
            **(quota.openai_headers() if quota is not None else {}),
            **self.config.extra_headers,
        }

    def _rate_limited(self, quota: FakeQuota) -> FakeResponse:
        """OpenAI's 429 for a request over the quota (reference §2.6)."""
        wait = quota.reset_in()
        body = error_body(
            f"Rate limit reached for requests. Please try again in {wait:.3f}s.",
            "requests",
            "rate_limit_exceeded",
        )
        headers = {**self._headers(), "retry-after": str(max(1, round(wait)))}
        return FakeResponse.json(body, 429, headers)

    def _authorized(self, request: FakeRequest) -> bool:
        auth = self.config.auth
        bearer = request.headers.get("authorization") == f"Bearer {self.config.key}"
        if auth == "none":
            return "authorization" not in request.headers
        if auth == "azure":
            return bearer or request.headers.get("api-key") == self.config.key
        if auth.startswith("header:"):
            return request.headers.get(auth.split(":", 1)[1]) == self.config.key
        return bearer

    def handle(self, request: FakeRequest) -> FakeResponse:
        if not self._authorized(request):
            if self.config.auth == "azure":
                body = {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription key or wrong API endpoint.",
                    }
                }
            else:
                body = error_body(
                    "Incorrect API key provided: sk-****.",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            return FakeResponse.json(body, 401, self._headers())
        path = request.path
        if request.method == "GET" and path.endswith("/models"):
            return self._models()
        match = re.fullmatch(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)", path)
        if match:
            if "api-version" not in request.query:
                return FakeResponse.json(
                    error_body("Missing api-version", "invalid_request_error", "404"), 404
                )
            if match.group(1) not in self.config.azure_deployments:
                return FakeResponse.json(
                    {
                        "error": {
                            "code": "DeploymentNotFound",
                            "message": "The API deployment for this resource does not exist.",
                        }
                    },
                    404,
                    self._headers(),
                )
            operation = match.group(2)
        elif path.endswith("/chat/completions"):
            operation = "chat/completions"
        elif path.endswith("/embeddings"):
            operation = "embeddings"
        else:
            return FakeResponse.json(error_body("Not found", "invalid_request_error"), 404)
        body = request.json()
        quota = self.config.quota
        if quota is not None and quota.over():
            return self._rate_limited(quota)
        if operation == "embeddings":
            return self._embeddings(body)
        if quota is not None:
            text, calls = plan(body)
            quota.charge(usage_for(body, text, calls)["total_tokens"])
        if body.get("stream"):
            chunks = stream_chunks(body)
            self._cache(body, chunks)
            if not self.config.reports_usage:
                chunks = [c for c in chunks if "usage" not in c]
            self._shape(chunks)
            if self.config.azure_annotations:
                chunks.insert(0, azure_prompt_filter_chunk())
            events: list[dict[str, Any] | str] = [*chunks, "[DONE]"]
            response = stream_response(sse_body(events), self.config.stream_piece)
            response.headers.update(self._headers())
            return response
        whole = completion(body)
        self._cache(body, [whole])
        if not self.config.reports_usage:
            del whole["usage"]
        self._shape([whole])
        return FakeResponse.json(whole, 200, self._headers())

    def _models(self) -> FakeResponse:
        """`GET /v1/models` (reference §2): a list object of model objects."""
        data = [
            {"id": name, "object": "model", "created": CREATED, "owned_by": "organization-owner"}
            for name in self.config.models
        ]
        return FakeResponse.json({"object": "list", "data": data}, 200, self._headers())

    def _embeddings(self, body: dict[str, Any]) -> FakeResponse:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = body.get("dimensions", 4)
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_vector(text, dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        data.reverse()  # clients must order by index, not by position
        tokens = sum(words(t) for t in inputs)
        if self.config.quota is not None:
            self.config.quota.charge(tokens)
        return FakeResponse.json(
            {
                "object": "list",
                "model": body["model"],
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            200,
            self._headers(),
        )


def slow_first_byte(response: FakeResponse, seconds: float) -> FakeResponse:
    response.header_delay = seconds
    return response


__all__ = [
    "OpenAIFake",
    "OpenAIFakeConfig",
    "Write",
    "azure_annotate",
    "azure_prompt_filter_chunk",
    "chunk",
    "completion",
    "error_body",
    "slow_first_byte",
    "sse_body",
    "stream_chunks",
    "stream_response",
    "strip_tool_call_ids",
]
