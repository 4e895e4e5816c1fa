"""A typed asyncio client for LLM Gateway.

    async with GatewayClient("localhost:50051", token=TOKEN) as gateway:
        reply = await gateway.chat("mock", "Hello")
        async for chunk in gateway.stream_chat("mock", "Tell me more"):
            print(chunk.text_delta, end="")

Calls that fail with UNAVAILABLE are retried by gRPC itself (the channel's service
config: at most 3 attempts, never after a response started); every other error is
raised as `GatewayCallError` with the google.rpc details decoded.
"""

from __future__ import annotations

from llmgateway_client.client import GatewayCallError, GatewayClient, user_message
from llmgateway_client.details import ErrorDetails, error_details

__all__ = ["ErrorDetails", "GatewayCallError", "GatewayClient", "error_details", "user_message"]
