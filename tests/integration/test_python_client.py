"""The typed Python client (clients/python) against the running gateway."""

from __future__ import annotations

import pytest
from llmgateway.v1 import chat_pb2
from llmgateway_client import GatewayCallError, GatewayClient

from tests.fakes.keys import HS_SECRET, claims, sign
from tests.support import running_gateway

CONFIG = """
server: {host: 127.0.0.1, port: 0}
routing: {retry: {max_attempts: 1}, breaker: {disabled: true}}
auth:
  issuers:
    - {issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}
providers:
  - {name: mock, mock: {faults_from_metadata: true}}
models:
  - {alias: mock, provider: mock}
  - {alias: mock-embed, provider: mock, capabilities: {embeddings: true}}
"""


async def test_client_chat_stream_embed_and_errors() -> None:
    async with running_gateway(CONFIG, environ={"GW_SECRET": HS_SECRET}) as gateway:
        token = sign(claims("dev"), HS_SECRET, "HS256")
        async with GatewayClient(f"127.0.0.1:{gateway.port}", token=token) as client:
            reply = await client.chat("mock", "typed client")
            assert reply.message.parts[0].text == "typed client"
            chunks = [c async for c in client.stream_chat("mock", "a b c")]
            assert "".join(c.text_delta for c in chunks) == "a b c"
            assert chunks[-1].usage.output_tokens == 3
            embedded = await client.embed("mock-embed", ["x", "y"])
            assert len(embedded.embeddings) == 2
            assert [m.alias for m in await client.list_models()] == ["mock", "mock-embed"]
            with pytest.raises(GatewayCallError) as caught:
                await client.chat("mock", "x", chat_pb2.GenerationConfig(max_output_tokens=-1))
            details = caught.value.details
            assert details.reason == "INVALID_REQUEST"
            assert "generation_config.max_output_tokens" in details.field_violations
            with pytest.raises(GatewayCallError) as streamed:
                async for _ in client.stream_chat("nope", "x"):
                    pass
            assert streamed.value.details.reason == "MODEL_NOT_FOUND"
        async with GatewayClient(f"127.0.0.1:{gateway.port}") as anonymous:
            with pytest.raises(GatewayCallError) as refused:
                await anonymous.chat("mock", "x")
            assert refused.value.details.reason == "INVALID_CREDENTIALS"


async def test_client_retries_unavailable_on_its_own() -> None:
    """The channel's service config retries UNAVAILABLE: a fault on the first attempt
    of each call (the gateway's own retries are off here) is invisible to the caller."""
    async with running_gateway(CONFIG, environ={"GW_SECRET": HS_SECRET}) as gateway:
        token = sign(claims("dev"), HS_SECRET, "HS256")
        async with GatewayClient(f"127.0.0.1:{gateway.port}", token=token) as client:
            with pytest.raises(GatewayCallError) as caught:
                await client.chat("nope", "x")
            assert caught.value.details.code.name == "NOT_FOUND"
            stats_before = gateway.server.stats.snapshot("mock")[0].requests
            client._metadata = (*client._metadata, ("x-mock-fail-status", "503"))
            with pytest.raises(GatewayCallError) as unavailable:
                await client.chat("mock", "x")
            assert unavailable.value.details.code.name == "UNAVAILABLE"
            assert gateway.server.stats.snapshot("mock")[0].requests - stats_before == 3
