"""The floor: a bare grpc.aio server on uvloop that answers the gateway's own Chat
method with a fixed ChatResponse, and StreamChat with STREAM_MESSAGES fixed chunks, doing
nothing else (no auth, no audit, no routing). Whatever the gateway costs beyond it is
the gateway's own.

`python -m bench.echo_server PORT_FILE`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvloop
from llmgateway.v1 import chat_pb2, content_pb2

from bench.fast_upstream import STREAM_WORDS

STREAM_MESSAGES = STREAM_WORDS + 1  # what the gateway relays for one upstream stream

_REPLY = chat_pb2.ChatResponse(
    model="echo",
    message=content_pb2.Message(
        role=content_pb2.ROLE_ASSISTANT, parts=[content_pb2.Part(text="Typed contracts help.")]
    ),
    finish_reason=chat_pb2.FINISH_REASON_STOP,
).SerializeToString()
_CHUNK = chat_pb2.StreamChatResponse(text_delta="word ").SerializeToString()


async def _chat(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _REPLY


async def _stream_chat(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(STREAM_MESSAGES):
        yield _CHUNK


async def main(port_file: str) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "llmgateway.v1.ProviderService",
        {
            "Chat": grpc.unary_unary_rpc_method_handler(_chat),
            "StreamChat": grpc.unary_stream_rpc_method_handler(_stream_chat),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
