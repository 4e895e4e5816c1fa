"""A cheap estimate of the tokens a call will use, charged to tokens-per-minute limits
before the call and reconciled with the real usage after it. Pure.

Input: UTF-8 bytes / 4, rounded up, of every text the provider reads: message text,
names, tool calls and results, reasoning, tool definitions (name, description and
parameters as JSON) and a JSON response schema; plus MESSAGE_OVERHEAD tokens per
message (role markers), IMAGE_TOKENS per image and DOCUMENT_TOKENS per document
(a PDF of a few pages), whatever their size. Bytes rather
than characters: the same as characters for English (about 4 per token) and closer
for scripts that take more tokens per character (CJK is 3 bytes a character).

Output (chat): max_output_tokens when set, which is the most the call can use;
otherwise DEFAULT_OUTPUT_TOKENS plus reasoning_budget_tokens when set. Embeddings
have no output.

Never less than 1.
"""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2
from llmgateway.v1 import chat_pb2, content_pb2, embed_pb2

BYTES_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
IMAGE_TOKENS = 1000
DOCUMENT_TOKENS = 3000
DEFAULT_OUTPUT_TOKENS = 256


def text_tokens(text: str) -> int:
    """UTF-8 bytes / 4, rounded up; 0 for the empty string."""
    return tokens_of_bytes(len(text.encode("utf-8")))


def _json_tokens(value: struct_pb2.Struct) -> int:
    if not value.fields:
        return 0
    return text_tokens(json_format.MessageToJson(value, indent=None))


def _part_tokens(part: content_pb2.Part) -> int:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return text_tokens(part.text)
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "tool_call":
        return text_tokens(part.tool_call.name) + text_tokens(part.tool_call.arguments)
    if kind == "tool_result":
        return text_tokens(part.tool_result.name) + text_tokens(part.tool_result.content)
    if kind == "reasoning":
        return text_tokens(part.reasoning.text)
    if kind == "document":
        return DOCUMENT_TOKENS + text_tokens(part.document.title)
    return 0


def tokens_of_bytes(byte_count: int) -> int:
    """UTF-8 bytes / 4, rounded up."""
    return -(-byte_count // BYTES_PER_TOKEN)


def _chat_input_tokens(request: chat_pb2.ChatRequest) -> int:
    total = 0
    for message in request.messages:
        total += MESSAGE_OVERHEAD + text_tokens(message.name)
        total += sum(_part_tokens(part) for part in message.parts)
    for tool in request.tools:
        total += text_tokens(tool.name) + text_tokens(tool.description)
        total += _json_tokens(tool.parameters)
    return total + _json_tokens(request.generation_config.response_format.json_schema)


def output_allowance(request: chat_pb2.ChatRequest) -> int:
    """The output a chat call may use: max_output_tokens when set, else the default
    plus the reasoning budget."""
    config = request.generation_config
    if config.HasField("max_output_tokens") and config.max_output_tokens > 0:
        return config.max_output_tokens
    allowance = DEFAULT_OUTPUT_TOKENS
    if config.HasField("reasoning_budget_tokens"):
        allowance += max(0, config.reasoning_budget_tokens)
    return allowance


def input_tokens(request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest) -> int:
    """The estimated input tokens of a call (what the provider reads); at least 1."""
    if isinstance(request, chat_pb2.ChatRequest):
        return max(1, _chat_input_tokens(request))
    return max(1, sum(text_tokens(text) for text in request.inputs))


def estimate_tokens(request: chat_pb2.ChatRequest | embed_pb2.EmbedRequest) -> int:
    """The estimated input + output tokens of a call; at least 1."""
    if isinstance(request, chat_pb2.ChatRequest):
        return max(1, _chat_input_tokens(request) + output_allowance(request))
    return input_tokens(request)
