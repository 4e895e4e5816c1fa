"""Gateway replicas as real processes (python -m service), sharing one redis-server:
what tests of state shared between replicas start, call and read."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from llmgateway.v1 import provider_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support import GatewayProcess, gateway_process


@dataclass
class Replica:
    process: GatewayProcess
    channel: grpc.aio.Channel
    stub: provider_service_pb2_grpc.ProviderServiceStub

    def metrics_address(self) -> str:
        for line in self.process.logs().splitlines():
            if '"metrics listening"' in line:
                return str(json.loads(line)["address"])
        raise AssertionError(f"no metrics endpoint:\n{self.process.logs()}")

    async def metrics(self) -> dict[str, float]:
        """Every sample of the replica's /metrics, by name (and labels, as name{k=v})."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{self.metrics_address()}/metrics", timeout=10)
        response.raise_for_status()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


@contextlib.contextmanager
def _processes(
    config: str, tmp: Path, env: dict[str, str], count: int
) -> Iterator[list[GatewayProcess]]:
    path = tmp / "gateway.yaml"
    path.write_text(config)
    with contextlib.ExitStack() as stack:
        running = []
        for index in range(count):
            home = tmp / f"replica-{index}"
            home.mkdir()
            running.append(stack.enter_context(gateway_process(path, home, extra_env=env)))
        yield running


@contextlib.asynccontextmanager
async def replica_processes(
    config: str, tmp: Path, env: dict[str, str], count: int = 2
) -> AsyncIterator[list[Replica]]:
    """`count` gateway processes with one config file; each stopped (killed) at the end."""
    with _processes(config, tmp, env, count) as processes:
        replicas = []
        try:
            for process in processes:
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}")
                stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
                replicas.append(Replica(process, channel, stub))
            yield replicas
        finally:
            for replica in replicas:
                await replica.channel.close()
