"""Exemptions through the running gateway: the configured full names, matched exactly."""

from __future__ import annotations

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.fakes.keys import HS_SECRET, claims, sign
from tests.support import chat_request, running_gateway

LIST_MODELS = "/llmgateway.v1.ProviderService/ListModels"
CONFIG = """
server: {{host: 127.0.0.1, port: 0}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
auth:
  reflection_open: false
  exempt_methods: {exempt}
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
providers:
  - {{name: mock, mock: {{}}}}
models:
  - {{alias: mock, provider: mock}}
"""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _list_models_code(exempt: list[str], metadata: tuple[tuple[str, str], ...]) -> str:
    config = CONFIG.format(exempt="[" + ", ".join(f'"{m}"' for m in exempt) + "]")
    async with running_gateway(config, environ={"GW_SECRET": HS_SECRET}) as gateway:
        try:
            reply = await gateway.stub.ListModels(
                models_pb2.ListModelsRequest(), metadata=metadata, timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        assert [m.alias for m in reply.models] == ["mock"]
        return "OK"


async def test_the_exact_name_is_exempt_and_nothing_else() -> None:
    config = CONFIG.format(exempt=f'["{LIST_MODELS}"]')
    async with running_gateway(config, environ={"GW_SECRET": HS_SECRET}) as gateway:
        listed = await gateway.stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        assert [m.alias for m in listed.models] == ["mock"]
        for call in (
            gateway.stub.GetProviderStats(models_pb2.GetProviderStatsRequest(), timeout=5),
            gateway.stub.Chat(chat_request(), timeout=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        forged = bearer(sign(claims("dev"), HS_SECRET + "x", "HS256"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.ListModels(
                models_pb2.ListModelsRequest(), metadata=forged, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, "a sent token is checked"


@pytest.mark.parametrize(
    "exempt",
    [
        [],
        ["/llmgateway.v1.ProviderService/List"],
        ["/llmgateway.v1.ProviderService/ListModel"],
        ["/llmgateway.v1.ProviderService/ListModelsX"],
        ["/llmgateway.v1.ProviderService/listmodels"],
        ["/llmgateway.v1.providerservice/ListModels"],
        ["/llmgateway.v1.ProviderServic/ListModels"],
        ["/v1.ProviderService/ListModels"],
    ],
)
async def test_configured_near_misses_exempt_nothing(exempt: list[str]) -> None:
    assert await _list_models_code(exempt, ()) == "UNAUTHENTICATED"
    token = bearer(sign(claims("dev"), HS_SECRET, "HS256"))
    assert await _list_models_code(exempt, token) == "OK"


async def test_the_configured_name_exempts_it() -> None:
    assert await _list_models_code([LIST_MODELS], ()) == "OK"
    assert await _list_models_code(["/a.B/C", LIST_MODELS], ()) == "OK"
