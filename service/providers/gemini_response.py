"""Google Gemini API: responses and `alt=sse` stream chunks, from Gemini JSON to the
gateway's protos.

Reference §5.3, §5.4 and §8. The first candidate is the answer (the others, when
candidateCount asked for more, are ChatResponse.candidates); a prompt blocked before any
candidate is a refusal: FINISH_REASON_REFUSAL, the block reason as the raw reason and in
the refusal text. An answer cut by a safety filter (finishReason SAFETY and the like)
stays CONTENT_FILTER. Safety ratings, citations, grounding and prompt feedback travel
in provider_metadata.

- Gemini sends no tool-call ids; ids are derived from `responseId` and the call's
  position in the turn (`call_<responseId>_<n>`), or a digest of the call without one, so
  Chat and StreamChat name the same call the same way.
- A `thoughtSignature` on a non-thought part is returned as a Reasoning part with an
  empty text (a `reasoning_signature` chunk in streams) placed before the part it signs.
- Streams have no terminator: the chunk with `finishReason` is the last content chunk;
  `usageMetadata` is cumulative (the last one wins); an error envelope inside the stream
  is raised as that error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.providers import logprobs, provider_metadata
from service.providers.dialect import StreamParser, has_content, usage
from service.providers.gemini_errors import error_envelope, upstream_error

_STOP = chat_pb2.FINISH_REASON_STOP
_FINISH: dict[str, chat_pb2.FinishReason.ValueType] = {
    "STOP": _STOP,
    "MAX_TOKENS": chat_pb2.FINISH_REASON_LENGTH,
    **dict.fromkeys(
        (
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
        ),
        chat_pb2.FINISH_REASON_CONTENT_FILTER,
    ),
}


def finish_reason(raw: str, has_tool_calls: bool) -> chat_pb2.FinishReason.ValueType:
    """Reference §8.1: STOP with function calls is TOOL_CALLS; the rest is OTHER."""
    reason = _FINISH.get(raw, chat_pb2.FINISH_REASON_OTHER)
    if reason == _STOP and has_tool_calls:
        return chat_pb2.FINISH_REASON_TOOL_CALLS
    return reason


def usage_from(metadata: Mapping[str, Any] | None) -> route_pb2.Usage:
    """Reference §8.2: input = prompt (cached included) + tool-use prompt; output =
    candidates + thoughts."""
    if not metadata:
        return usage()
    thoughts = int(metadata.get("thoughtsTokenCount", 0))
    return usage(
        input_tokens=int(metadata.get("promptTokenCount", 0))
        + int(metadata.get("toolUsePromptTokenCount", 0)),
        output_tokens=int(metadata.get("candidatesTokenCount", 0)) + thoughts,
        cached_input_tokens=int(metadata.get("cachedContentTokenCount", 0)),
        reasoning_tokens=thoughts,
    )


def tool_call_id(response_id: str, index: int, name: str, arguments: str) -> str:
    """A deterministic id for the call at `index` of a turn."""
    if response_id:
        return f"call_{response_id}_{index}"
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()[:16]
    return f"call_{digest}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _function_call(part: Mapping[str, Any]) -> Mapping[str, Any] | None:
    call = part.get("functionCall")
    return call if isinstance(call, Mapping) else None


def _response_parts(
    parts: list[Any], response_id: str, first_index: int
) -> tuple[list[content_pb2.Part], int]:
    """Proto parts for Gemini parts, and how many tool calls they held."""
    out: list[content_pb2.Part] = []
    calls = 0
    for part in parts:
        signature = str(part.get("thoughtSignature", ""))
        call = _function_call(part)
        if part.get("thought") and "text" in part:
            out.append(
                content_pb2.Part(
                    reasoning=content_pb2.Reasoning(text=str(part["text"]), signature=signature)
                )
            )
            continue
        if signature:
            out.append(content_pb2.Part(reasoning=content_pb2.Reasoning(signature=signature)))
        if call is not None:
            out.append(
                content_pb2.Part(tool_call=_tool_call(call, response_id, first_index + calls))
            )
            calls += 1
        elif part.get("text"):
            text = str(part["text"])
            previous = out[-1] if out else None
            if previous is not None and previous.WhichOneof("kind") == "text" and not signature:
                previous.text += text
            else:
                out.append(content_pb2.Part(text=text))
    return out, calls


def _tool_call(call: Mapping[str, Any], response_id: str, index: int) -> content_pb2.ToolCall:
    name = str(call["name"])
    args = call.get("args")
    arguments = _compact(args if args is not None else {})
    upstream_id = call.get("id")
    return content_pb2.ToolCall(
        id=str(upstream_id) if upstream_id else tool_call_id(response_id, index, name, arguments),
        name=name,
        arguments=arguments,
    )


def _candidate(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = body.get("candidates")
    if not candidates:
        return None
    first = candidates[0]
    if not isinstance(first, Mapping):
        raise TypeError("a candidate is not an object")
    return first


def _parts(candidate: Mapping[str, Any] | None) -> list[Any]:
    if candidate is None:
        return []
    content = candidate.get("content") or {}
    parts = content.get("parts") or []
    if not isinstance(parts, list):
        raise TypeError("content.parts is not a list")
    return parts


def _block_reason(body: Mapping[str, Any]) -> str:
    feedback = body.get("promptFeedback") or {}
    return str(feedback.get("blockReason") or "")


def blocked_refusal(block: str) -> str:
    """The refusal text for a prompt Gemini blocked."""
    return f"the provider blocked the prompt ({block})"


def metadata_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """provider_metadata entries of one response or stream chunk."""
    return {
        **provider_metadata.pick(body, provider_metadata.GEMINI_KEYS),
        **provider_metadata.pick(_candidate(body), provider_metadata.GEMINI_CANDIDATE_KEYS),
    }


def parse_chat_body(body: Mapping[str, Any], upstream_request_id: str) -> chat_pb2.ChatResponse:
    """The ChatResponse for a `generateContent` body; the route names `upstream_request_id`
    (the upstream's request-id header) when there is one, else the body's `responseId`."""
    response_id = str(body.get("responseId") or "")
    candidate = _candidate(body)
    parts, calls = _response_parts(_parts(candidate), response_id, 0)
    block = _block_reason(body)
    if candidate is None and not block:
        raise ValueError("the response has neither candidates nor a block reason")
    refusal = ""
    if candidate is None:
        raw = block
        reason = chat_pb2.FINISH_REASON_REFUSAL
        refusal = blocked_refusal(block)
    else:
        raw = str(candidate.get("finishReason") or "")
        reason = finish_reason(raw, calls > 0)
    result = chat_pb2.ChatResponse(
        message=content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=parts),
        finish_reason=reason,
        raw_finish_reason=raw,
        usage=usage_from(body.get("usageMetadata")),
        refusal=refusal,
    )
    if candidate is not None:
        result.logprobs.extend(logprobs.from_gemini(candidate.get("logprobsResult")))
    for index, extra in enumerate((body.get("candidates") or [])[1:], start=1):
        extra_parts, extra_calls = _response_parts(_parts(extra), f"{response_id}_{index}", 0)
        extra_raw = str(extra.get("finishReason") or "")
        result.candidates.add(
            index=index,
            message=content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=extra_parts),
            finish_reason=finish_reason(extra_raw, extra_calls > 0),
            raw_finish_reason=extra_raw,
            logprobs=logprobs.from_gemini(extra.get("logprobsResult")),
        )
    metadata = provider_metadata.to_struct(metadata_of(body))
    if metadata is not None:
        result.provider_metadata.CopyFrom(metadata)
    result.route.upstream_request_id = upstream_request_id or response_id
    return result


def parse_embed_body(body: Mapping[str, Any]) -> embed_pb2.EmbedResponse:
    """The EmbedResponse for an `embedContent` or `batchEmbedContents` body."""
    vectors = [body["embedding"]] if "embedding" in body else list(body["embeddings"])
    return embed_pb2.EmbedResponse(
        embeddings=[
            embed_pb2.Embedding(index=i, values=[float(v) for v in vector["values"]])
            for i, vector in enumerate(vectors)
        ],
        usage=usage_from(body.get("usageMetadata")),
    )


class GeminiStreamParser(StreamParser):
    """`alt=sse` chunks: deltas per part, the finish on the chunk with `finishReason`,
    cumulative `usageMetadata` (the last one wins), reading on to EOF."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._calls = 0
        self._request_id_sent = False
        self._metadata: dict[str, Any] = {}

    def finish(self) -> list[chat_pb2.StreamChatResponse]:
        chunks = super().finish()
        metadata = provider_metadata.to_struct(self._metadata)
        if metadata is not None:
            chunks[-1].provider_metadata.CopyFrom(metadata)
        return chunks

    def parse(self, event: Any) -> list[chat_pb2.StreamChatResponse]:
        data = event.data
        if not data.strip():
            return []
        value = json.loads(data)
        error = error_envelope(value)
        if error is not None:
            raise upstream_error(self.provider, self.model, 200, error, {}, 0.0)
        bodies = value if isinstance(value, list) else [value]
        chunks: list[chat_pb2.StreamChatResponse] = []
        for body in bodies:
            if not isinstance(body, Mapping):
                raise TypeError("a stream chunk is not a JSON object")
            chunks.extend(self._chunk(body))
        return chunks

    def _chunk(self, body: Mapping[str, Any]) -> list[chat_pb2.StreamChatResponse]:
        if body.get("usageMetadata"):
            self.usage = usage_from(body["usageMetadata"])
        response_id = str(body.get("responseId") or "")
        candidate = _candidate(body)
        self._metadata.update(metadata_of(body))
        chunks = [c for part in _parts(candidate) for c in self._part(part, response_id)]
        chunks = [c for c in chunks if has_content(c)]
        if candidate is not None and chunks:
            chunks[-1].logprobs.extend(logprobs.from_gemini(candidate.get("logprobsResult")))
        if chunks and self.finished:
            raise ValueError("content arrived after the finish reason")
        raw = str(candidate.get("finishReason") or "") if candidate is not None else ""
        reason = finish_reason(raw, self._calls > 0) if raw else None
        block = _block_reason(body)
        if reason is None and block and candidate is None:
            raw, reason = block, chat_pb2.FINISH_REASON_REFUSAL
            chunks.append(chat_pb2.StreamChatResponse(refusal_delta=blocked_refusal(block)))
        if reason is not None and not self.finished:
            self.finished = True
            self.finish_reason = reason
            if not chunks:
                chunks.append(chat_pb2.StreamChatResponse())
            chunks[-1].finish_reason = reason
            chunks[-1].raw_finish_reason = raw
        if chunks and response_id and not self._request_id_sent:
            self._request_id_sent = True
            chunks[0].route.upstream_request_id = response_id
        return chunks

    def _part(self, part: Mapping[str, Any], response_id: str) -> list[chat_pb2.StreamChatResponse]:
        signature = str(part.get("thoughtSignature", ""))
        if part.get("thought") and "text" in part:
            return [
                chat_pb2.StreamChatResponse(
                    reasoning_delta=str(part["text"]), reasoning_signature=signature
                )
            ]
        out = []
        if signature:
            out.append(chat_pb2.StreamChatResponse(reasoning_signature=signature))
        call = _function_call(part)
        if call is not None:
            index = self._calls
            self._calls += 1
            built = _tool_call(call, response_id, index)
            delta = chat_pb2.ToolCallDelta(
                index=index, id=built.id, name=built.name, arguments_delta=built.arguments
            )
            out.append(chat_pb2.StreamChatResponse(tool_call_deltas=[delta]))
        elif part.get("text"):
            out.append(chat_pb2.StreamChatResponse(text_delta=str(part["text"])))
        return out
