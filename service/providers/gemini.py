"""Google Gemini API (generativelanguage): the pure dialect and its factory.

Wire format: reference §5. `generateContent`, `streamGenerateContent?alt=sse` (SSE with
CRLF line ends, no terminator: the chunk with `finishReason` is the last content chunk),
`embedContent` / `batchEmbedContents`, errors as a google.rpc.Status in JSON.

Decisions worth knowing:
- Gemini sends no tool-call ids; ids are derived from `responseId` and the call's
  position in the turn (`call_<responseId>_<n>`), or a digest of the call without one, so
  Chat and StreamChat name the same call the same way. Tool results find their function
  name through ToolResult.name or the earlier call with that id.
- A `thoughtSignature` on a non-thought part is returned as a Reasoning part with an
  empty text (a `reasoning_signature` chunk in streams) placed before the part it signs;
  sent back, such a signature is attached to the part that follows it.
- `reasoning_budget_tokens` also asks for thought summaries (`includeThoughts`), since a
  caller that sets a budget wants to see the reasoning.
- The request id is the `x-request-id` header when an upstream sends one, else the
  body's `responseId`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2
from llmgateway.config.v1 import config_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2, route_pb2

from service.errors import FieldViolation, GatewayError, invalid_argument
from service.providers import factory, model_names
from service.providers.base import Capabilities, Deployment, Provider
from service.providers.dialect import Dialect, StreamParser, has_content, usage
from service.providers.http import HttpRequestSpec, HttpResponse
from service.providers.retry_hints import (
    go_duration_seconds,
    retry_after_seconds,
    should_retry_header,
    text_hint_seconds,
)
from service.providers.upstream_errors import UpstreamFailure, from_upstream

DEFAULT_HOST = "https://generativelanguage.googleapis.com/"
DEFAULT_API_VERSION = "v1beta"
REQUEST_ID_HEADER = "x-request-id"
# batchEmbedContents takes at most this many requests.
MAX_BATCH_EMBED = 100

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
_TOOL_MODES = {
    content_pb2.TOOL_CHOICE_MODE_AUTO: "AUTO",
    content_pb2.TOOL_CHOICE_MODE_NONE: "NONE",
    content_pb2.TOOL_CHOICE_MODE_REQUIRED: "ANY",
}
_CONTEXT_LENGTH = re.compile(
    r"exceeds the maximum number of tokens|input token count .*exceeds|context (length|window)",
    re.IGNORECASE,
)
_API_KEY_INVALID = re.compile(r"api key not valid", re.IGNORECASE)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.S)
_TYPE_PREFIX = "type.googleapis.com/google.rpc."
# google.rpc.Code names and their HTTP equivalents, for error bodies without a code.
_HTTP_BY_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
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


def _plain(value: Any) -> Any:
    """A Struct as plain JSON, with integral numbers written as integers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _plain(json_format.MessageToDict(struct))
    return result


def model_resource(model: str) -> str:
    """The model's resource name, as request bodies name it: `models/...` or
    `tunedModels/...`."""
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def model_path(model: str) -> str:
    """The model's resource name as a URL path: collection and id, each encoded as one
    segment, so that no model name can reach another path (the registry has already
    refused names outside the Gemini rule of service/providers/model_names.py)."""
    collection, _, model_id = model_resource(model).partition("/")
    return model_names.path(collection, model_id)


def _function_call(part: Mapping[str, Any]) -> Mapping[str, Any] | None:
    call = part.get("functionCall")
    return call if isinstance(call, Mapping) else None


# --- request ----------------------------------------------------------------------------


class _Contents:
    """Builds `contents` and `systemInstruction` from the messages, collecting every
    violation before raising."""

    def __init__(self, request: chat_pb2.ChatRequest) -> None:
        self.contents: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []
        self.violations: list[FieldViolation] = []
        self._open_tool_turn = False
        self._names = {
            part.tool_call.id: part.tool_call.name
            for message in request.messages
            for part in message.parts
            if part.WhichOneof("kind") == "tool_call"
        }
        for i, message in enumerate(request.messages):
            self._message(message, f"messages[{i}]")

    def _append(self, role: str, parts: list[dict[str, Any]], tool_results: bool) -> None:
        """Adds a turn; tool results right after tool results join their `user` turn."""
        if not parts:
            return
        if tool_results and self._open_tool_turn:
            self.contents[-1]["parts"].extend(parts)
            return
        self.contents.append({"role": role, "parts": parts})
        self._open_tool_turn = tool_results

    def _message(self, message: content_pb2.Message, path: str) -> None:
        role = message.role
        if role == content_pb2.ROLE_SYSTEM:
            self.system.extend({"text": p.text} for p in message.parts if p.text)
            return
        parts: list[dict[str, Any]] = []
        signature = ""
        for j, part in enumerate(message.parts):
            part_path = f"{path}.parts[{j}]"
            kind = part.WhichOneof("kind")
            built: dict[str, Any] | None = None
            if kind == "text":
                built = {"text": part.text}
            elif kind == "image":
                built = self._image(part.image, f"{part_path}.image")
            elif kind == "tool_call":
                built = self._tool_call(part.tool_call, f"{part_path}.tool_call")
            elif kind == "tool_result":
                built = self._tool_result(part.tool_result, f"{part_path}.tool_result")
            elif kind == "reasoning":
                if not part.reasoning.text:
                    signature = part.reasoning.signature or signature
                    continue
                built = {"text": part.reasoning.text, "thought": True}
                if part.reasoning.signature:
                    built["thoughtSignature"] = part.reasoning.signature
            if built is None:
                continue
            if signature and "thoughtSignature" not in built:
                built["thoughtSignature"] = signature
            signature = ""
            parts.append(built)
        if signature:
            parts.append({"text": "", "thoughtSignature": signature})
        if role == content_pb2.ROLE_ASSISTANT:
            self._append("model", parts, tool_results=False)
        elif role == content_pb2.ROLE_TOOL:
            self._append("user", parts, tool_results=True)
        else:
            self._append("user", parts, tool_results=False)

    def _image(self, image: content_pb2.Image, path: str) -> dict[str, Any] | None:
        if image.WhichOneof("source") == "data":
            data = base64.b64encode(image.data).decode("ascii")
            return {"inlineData": {"mimeType": image.mime_type, "data": data}}
        url = image.url
        if url.startswith("data:"):
            match = _DATA_URL.match(url)
            if match is None:
                self.violations.append(
                    FieldViolation(f"{path}.url", "must be a base64 data URL with a media type")
                )
                return None
            return {"inlineData": {"mimeType": match["mime"], "data": match["data"]}}
        if not image.mime_type:
            self.violations.append(
                FieldViolation(
                    f"{path}.mime_type", "is required for image URLs sent to Gemini (fileData)"
                )
            )
            return None
        return {"fileData": {"mimeType": image.mime_type, "fileUri": url}}

    def _tool_call(self, call: content_pb2.ToolCall, path: str) -> dict[str, Any] | None:
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            self.violations.append(
                FieldViolation(f"{path}.arguments", "must be a JSON object text")
            )
            return None
        return {"functionCall": {"name": call.name, "args": args}}

    def _tool_result(self, result: content_pb2.ToolResult, path: str) -> dict[str, Any] | None:
        name = result.name or self._names.get(result.tool_call_id, "")
        if not name:
            self.violations.append(
                FieldViolation(
                    f"{path}.name",
                    "is required when no earlier tool call has this tool_call_id",
                )
            )
            return None
        try:
            value: Any = json.loads(result.content)
        except ValueError:
            value = result.content
        if result.is_error:
            response: Any = {"error": value}
        elif isinstance(value, dict):
            response = value
        else:
            response = {"output": value}
        return {"functionResponse": {"name": name, "response": response}}


def _generation_config(config: chat_pb2.GenerationConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("max_output_tokens", "maxOutputTokens"),
    ):
        if config.HasField(field):  # type: ignore[arg-type]
            out[name] = getattr(config, field)
    if config.stop_sequences:
        out["stopSequences"] = list(config.stop_sequences)
    for field, name in (
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if config.HasField(field):  # type: ignore[arg-type]
            out[name] = getattr(config, field)
    response_format = config.response_format
    if response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        out["responseMimeType"] = "application/json"
    elif response_format.type == chat_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        out["responseMimeType"] = "application/json"
        out["responseJsonSchema"] = _struct(response_format.json_schema)
    if config.HasField("reasoning_budget_tokens"):
        out["thinkingConfig"] = {
            "thinkingBudget": config.reasoning_budget_tokens,
            "includeThoughts": True,
        }
    return out


def _tools(request: chat_pb2.ChatRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters.fields:
                declaration["parameters"] = _struct(tool.parameters)
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    calling: dict[str, Any] | None = None
    if which == "tool_name":
        calling = {"mode": "ANY", "allowedFunctionNames": [choice.tool_name]}
    elif which == "mode" and choice.mode in _TOOL_MODES:
        calling = {"mode": _TOOL_MODES[choice.mode]}
    if calling is not None:
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


# --- response ---------------------------------------------------------------------------


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


# --- errors -----------------------------------------------------------------------------


def error_envelope(value: Any) -> Mapping[str, Any] | None:
    """The `error` object of a google.rpc.Status body, also when wrapped in a list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping) and isinstance(value.get("error"), Mapping):
        error: Mapping[str, Any] = value["error"]
        return error
    return None


def _detail(details: list[Any], type_name: str) -> Mapping[str, Any] | None:
    for detail in details:
        if isinstance(detail, Mapping) and detail.get("@type") == _TYPE_PREFIX + type_name:
            return detail
    return None


def upstream_error(
    provider: str,
    model: str,
    http_status: int,
    error: Mapping[str, Any] | None,
    headers: Mapping[str, str],
    now: float,
) -> GatewayError:
    """Maps a Gemini error (envelope or not) through the shared table."""
    error = error or {}
    message = str(error.get("message") or "")
    status_name = str(error.get("status") or "")
    details = error.get("details")
    details = details if isinstance(details, list) else []
    info = _detail(details, "ErrorInfo")
    reason = str(info.get("reason") or "") if info else ""
    body_code = error.get("code")
    status = http_status
    if http_status in (200, 502):
        # An error inside a 200 stream (200), or a 200 JSON error where a stream was
        # expected, which the transport reports as 502: the body knows better.
        if isinstance(body_code, int) and 400 <= body_code <= 599:
            status = body_code
        elif status_name in _HTTP_BY_STATUS:
            status = _HTTP_BY_STATUS[status_name]
        elif http_status == 200:
            status = 500
    retry_after = retry_after_seconds(headers, now)
    if retry_after is None:
        retry_info = _detail(details, "RetryInfo")
        if retry_info is not None:
            retry_after = go_duration_seconds(str(retry_info.get("retryDelay") or ""))
    if retry_after is None and message:
        retry_after = text_hint_seconds(message)
    auth_failed = reason == "API_KEY_INVALID" or (
        status == 400 and bool(_API_KEY_INVALID.search(message))
    )
    gateway_error = from_upstream(
        UpstreamFailure(
            provider=provider,
            model=model,
            http_status=status,
            upstream_type=status_name,
            upstream_code=reason,
            request_id=headers.get(REQUEST_ID_HEADER, ""),
            retry_after=retry_after,
            context_length_exceeded=status == 400 and bool(_CONTEXT_LENGTH.search(message)),
            should_retry=should_retry_header(headers),
            auth_failed=auth_failed,
            failed_precondition=status_name == "FAILED_PRECONDITION",
        )
    )
    return gateway_error


# --- dialect ----------------------------------------------------------------------------


class GeminiDialect(Dialect):
    kind = "gemini"
    framing = "sse"
    request_id_header = REQUEST_ID_HEADER
    default_capabilities = Capabilities(
        streaming=True, tools=True, vision=True, json_output=True, embeddings=False
    )
    default_context_window = 1_048_576

    def chat_request(
        self, request: chat_pb2.ChatRequest, deployment: Deployment, stream: bool
    ) -> HttpRequestSpec:
        contents = _Contents(request)
        if contents.violations:
            raise invalid_argument(contents.violations)
        body: dict[str, Any] = {}
        if contents.system:
            body["systemInstruction"] = {"parts": contents.system}
        body["contents"] = contents.contents
        generation = _generation_config(request.generation_config)
        if generation:
            body["generationConfig"] = generation
        body.update(_tools(request))
        model = model_path(deployment.upstream_model)
        url = f"{model}:streamGenerateContent?alt=sse" if stream else f"{model}:generateContent"
        return HttpRequestSpec("POST", url, json_body=body)

    def parse_chat(self, response: HttpResponse, deployment: Deployment) -> chat_pb2.ChatResponse:
        body = json.loads(response.body)
        if not isinstance(body, Mapping):
            raise TypeError("the response is not a JSON object")
        response_id = str(body.get("responseId") or "")
        candidate = _candidate(body)
        parts, calls = _response_parts(_parts(candidate), response_id, 0)
        block = _block_reason(body)
        if candidate is None and not block:
            raise ValueError("the response has neither candidates nor a block reason")
        if candidate is None:
            raw = block
            reason = chat_pb2.FINISH_REASON_CONTENT_FILTER
        else:
            raw = str(candidate.get("finishReason") or "")
            reason = finish_reason(raw, calls > 0)
        result = chat_pb2.ChatResponse(
            message=content_pb2.Message(role=content_pb2.ROLE_ASSISTANT, parts=parts),
            finish_reason=reason,
            raw_finish_reason=raw,
            usage=usage_from(body.get("usageMetadata")),
        )
        result.route.upstream_request_id = (
            response.headers.get(REQUEST_ID_HEADER, "") or response_id
        )
        return result

    def stream_parser(self, deployment: Deployment) -> StreamParser:
        return GeminiStreamParser(self.provider, deployment.upstream_model)

    def parse_error(
        self, response: HttpResponse, deployment: Deployment, now: float
    ) -> GatewayError:
        try:
            envelope = error_envelope(json.loads(response.body))
        except ValueError:  # not JSON (an HTML page from a proxy), or not UTF-8
            envelope = None
        return upstream_error(
            self.provider,
            deployment.upstream_model,
            response.status,
            envelope,
            response.headers,
            now,
        )

    def embed_request(
        self, request: embed_pb2.EmbedRequest, deployment: Deployment
    ) -> HttpRequestSpec:
        model = model_path(deployment.upstream_model)

        def one(text: str) -> dict[str, Any]:
            item: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
            if request.HasField("dimensions"):
                item["outputDimensionality"] = request.dimensions
            return item

        if len(request.inputs) > MAX_BATCH_EMBED:
            raise invalid_argument(
                [
                    FieldViolation(
                        "inputs",
                        f"at most {MAX_BATCH_EMBED} for a Gemini model "
                        f"(batchEmbedContents' limit); got {len(request.inputs)}",
                    )
                ]
            )
        if len(request.inputs) == 1:
            return HttpRequestSpec("POST", f"{model}:embedContent", one(request.inputs[0]))
        resource = model_resource(deployment.upstream_model)
        requests = [{"model": resource, **one(text)} for text in request.inputs]
        return HttpRequestSpec("POST", f"{model}:batchEmbedContents", {"requests": requests})

    def parse_embed(
        self, response: HttpResponse, deployment: Deployment
    ) -> embed_pb2.EmbedResponse:
        body = json.loads(response.body)
        if not isinstance(body, Mapping):
            raise TypeError("the response is not a JSON object")
        vectors = [body["embedding"]] if "embedding" in body else list(body["embeddings"])
        result = embed_pb2.EmbedResponse(
            embeddings=[
                embed_pb2.Embedding(index=i, values=[float(v) for v in vector["values"]])
                for i, vector in enumerate(vectors)
            ],
            usage=usage_from(body.get("usageMetadata")),
        )
        result.route.upstream_request_id = response.headers.get(REQUEST_ID_HEADER, "")
        return result


class GeminiStreamParser(StreamParser):
    """`alt=sse` chunks: deltas per part, the finish on the chunk with `finishReason`,
    cumulative `usageMetadata` (the last one wins), reading on to EOF."""

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, model)
        self._calls = 0
        self._request_id_sent = False

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
        chunks = [c for part in _parts(candidate) for c in self._part(part, response_id)]
        chunks = [c for c in chunks if has_content(c)]
        if chunks and self.finished:
            raise ValueError("content arrived after the finish reason")
        raw = str(candidate.get("finishReason") or "") if candidate is not None else ""
        reason = finish_reason(raw, self._calls > 0) if raw else None
        block = _block_reason(body)
        if reason is None and block and candidate is None:
            raw, reason = block, chat_pb2.FINISH_REASON_CONTENT_FILTER
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


def create_gemini(config: config_pb2.ProviderConfig, environ: Mapping[str, str]) -> Provider:
    key = factory.api_key(config, environ)
    headers = {"x-goog-api-key": key} if key else {}
    base_url = DEFAULT_HOST + (config.gemini.api_version or DEFAULT_API_VERSION)
    return factory.http_provider(config, GeminiDialect(config.name), base_url, headers)
