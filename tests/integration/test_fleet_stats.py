"""GetProviderStats per deployment through the running gateway: recent calls, success
rate, latency and time-to-first-chunk percentiles, tokens and cost."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.tunable import TunableOpenAI
from tests.support import chat_request, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
providers:
  - {{name: up, base_url: "{url}/v1", openai_compatible: {{}}}}
models:
  - alias: m
    provider: up
    upstream_model: model-1
    pricing: {{input_per_million: 1, output_per_million: 2}}
"""


async def test_deployment_stats_report_the_recent_window_tokens_and_cost() -> None:
    fake = TunableOpenAI(delay=0.05)
    async with (
        FakeHttpServer(fake.handle) as server,
        running_gateway(CONFIG.format(url=server.url)) as gateway,
    ):
        inputs = outputs = 0
        cost = 0.0
        for i in range(3):
            reply = await gateway.stub.Chat(chat_request(f"one two {i}", model="m"), timeout=10)
            inputs += reply.usage.input_tokens
            outputs += reply.usage.output_tokens
            cost += reply.usage.cost_usd
        chunks = [
            c async for c in gateway.stub.StreamChat(chat_request("a b", model="m"), timeout=10)
        ]
        inputs += chunks[-1].usage.input_tokens
        outputs += chunks[-1].usage.output_tokens
        cost += chunks[-1].usage.cost_usd
        fake.fail_status = 500
        with pytest.raises(grpc.aio.AioRpcError):
            await gateway.stub.Chat(chat_request("boom", model="m"), timeout=10)
        stats = await gateway.stub.GetProviderStats(
            models_pb2.GetProviderStatsRequest(provider="up"), timeout=5
        )
    [deployment] = stats.providers[0].deployments
    assert deployment.upstream_model == "model-1"
    assert deployment.recent_calls == 5 == len(server.requests)
    assert deployment.success_rate == 4 / 5
    p50 = deployment.latency_p50.ToNanoseconds()
    p95 = deployment.latency_p95.ToNanoseconds()
    assert 50_000_000 <= p50 <= p95, "every answer was held back 50 ms"
    assert deployment.first_chunk_p50.ToNanoseconds() >= 50_000_000, "one stream"
    assert deployment.first_chunk_p95 == deployment.first_chunk_p50
    assert (deployment.input_tokens, deployment.output_tokens) == (inputs, outputs)
    assert inputs > 0 and outputs > 0
    assert abs(deployment.cost_usd - cost) < 1e-9 and cost > 0
    assert not deployment.key_missing
