"""The providers' rate limits held by two gateway processes together, through a real
redis-server: the quota of each deployment is one, whichever replica sends the call.

The buckets are timed by Redis's clock, which a test cannot hold still: the 30 calls are
sent at once, and are over long before the 6 s in which one request refills."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
from llmgateway.v1 import chat_pb2, provider_service_pb2_grpc

from tests.fakes.http_server import FakeHttpServer
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig
from tests.fakes.rate_limits import FakeQuota
from tests.fakes.redis_server import redis_server
from tests.integration.test_upstream_rate_limits import REASON, assert_held_back
from tests.support import GatewayProcess, chat_request, details_of, gateway_process

CONFIG = """
server: {{host: 127.0.0.1, port: 0, shutdown_grace: 1s}}
auth: {{disabled: true}}
routing: {{retry: {{max_attempts: 1}}}}
limits:
  redis: {{url_env: GW_REDIS_URL, key_prefix: "upstream-test:", timeout: 2s}}
providers:
  - {{name: east, api_key_env: RL_KEY, base_url: "{east}/v1", openai: {{}}}}
  - {{name: west, api_key_env: RL_KEY, base_url: "{west}/v1", openai: {{}}}}
models:
  - alias: pooled
    balance: BALANCE_STRATEGY_ROUND_ROBIN
    rate_limit: {{requests_per_minute: 10}}
    deployments:
      - {{provider: east, upstream_model: gpt-4o}}
      - {{provider: west, upstream_model: gpt-4o}}
"""


@contextlib.contextmanager
def replicas(config: str, tmp: Path, environ: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes with one configuration."""
    path = tmp / "gateway.yaml"
    path.write_text(config)
    with contextlib.ExitStack() as stack:
        processes = []
        for index in range(2):
            home = tmp / f"replica{index}"
            home.mkdir()
            processes.append(stack.enter_context(gateway_process(path, home, extra_env=environ)))
        yield processes


async def test_two_processes_share_each_deployments_quota(tmp_path: Path) -> None:
    east = OpenAIFake(OpenAIFakeConfig(quota=FakeQuota(requests=10, send_headers=False)))
    west = OpenAIFake(OpenAIFakeConfig(quota=FakeQuota(requests=10, send_headers=False)))
    with redis_server() as redis:
        async with (
            FakeHttpServer(east.handle) as east_server,
            FakeHttpServer(west.handle) as west_server,
        ):
            config = CONFIG.format(east=east_server.url, west=west_server.url)
            environ = {"RL_KEY": "sk-test", "GW_REDIS_URL": redis.url}
            with replicas(config, tmp_path, environ) as processes:
                channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in processes]
                try:
                    stubs = [provider_service_pb2_grpc.ProviderServiceStub(c) for c in channels]
                    # 30 calls at once, half through each process.
                    results = await asyncio.gather(
                        *(
                            stubs[i % 2].Chat(chat_request("hi", model="pooled"), timeout=30)
                            for i in range(30)
                        ),
                        return_exceptions=True,
                    )
                finally:
                    for channel in channels:
                        await channel.close()
    served = [r for r in results if isinstance(r, chat_pb2.ChatResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert (len(served), len(refused)) == (20, 10), [
        details_of(r).error_info.reason for r in refused
    ]
    assert east.config.quota is not None and west.config.quota is not None
    assert (east.config.quota.used_requests, west.config.quota.used_requests) == (10, 10)
    assert east.config.quota.refused == west.config.quota.refused == 0, "no upstream 429"
    for error in refused:
        assert details_of(error).error_info.reason == REASON
        delay = assert_held_back(error)
        assert 0 < delay <= 6.0, "one request frees up every 6 s (on Redis's clock)"
