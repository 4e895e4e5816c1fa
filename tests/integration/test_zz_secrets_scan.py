"""No token, key or prompt in any log or audit file.

Runs last (file order): first a workload of its own against a real gateway process
whose log and audit file it then reads, with prompts, keys and tokens it can recognise;
then a scan of every log and audit file the rest of the suite wrote."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import grpc
import pytest
from llmgateway.v1 import embed_pb2, provider_service_pb2_grpc

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, error_body
from tests.fakes.redis_server import REDIS_PASSWORD
from tests.support import DEV_SECRET, chat_request, free_port, gateway_process

PROMPT_MARKER = "PROMPT-MARKER-7f3a9c"
UPSTREAM_KEY = "sk-scan-secret-key-5d1e0b"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
KNOWN_SECRETS = (
    HS_SECRET,
    DEV_SECRET,
    UPSTREAM_KEY,
    "sk-test",
    "sk-ant-secret",
    "az-key",
    "vllm-key",
    "dev-only-insecure-secret",
    REDIS_PASSWORD,
)

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 5s}}
logging: {{level: debug}}
audit: {{path: "{audit}", hash_chain: true}}
routing: {{retry: {{max_attempts: 2, initial_backoff: 0.01s}}}}
auth:
  issuers:
    - {{issuer: scan, audiences: [llm-gateway], algorithms: [HS256], secret_env: SCAN_SECRET}}
providers:
  - {{name: mock, mock: {{faults_from_metadata: true}}}}
  - {{name: openai, api_key_env: SCAN_OPENAI_KEY, base_url: "{upstream}/v1", openai: {{}}}}
models:
  - {{alias: mock, provider: mock}}
  - {{alias: mock-embed, provider: mock, capabilities: {{embeddings: true}}}}
  - {{alias: gpt, provider: openai, upstream_model: gpt-4o-mini}}
"""


def leaks(text: str) -> list[str]:
    found = [secret for secret in KNOWN_SECRETS if secret in text]
    found.extend(match.group(0)[:24] for match in JWT.finditer(text))
    if PROMPT_MARKER in text:
        found.append(PROMPT_MARKER)
    return found


async def test_a_workload_leaves_no_secret_in_logs_or_audit(tmp_path: Path) -> None:
    def upstream(request: FakeRequest) -> FakeResponse:
        body = request.json()
        if "fail" in str(body):
            # An upstream error that quotes the prompt and the key back, as some do.
            return FakeResponse.json(
                error_body(
                    f"bad request {PROMPT_MARKER} with key {UPSTREAM_KEY}", "invalid_request_error"
                ),
                400,
            )
        return OpenAIFake(OpenAIFakeConfig(key=UPSTREAM_KEY)).handle(request)

    async with FakeHttpServer(upstream) as fake:
        port = free_port()
        audit = tmp_path / "audit.jsonl"
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(port=port, audit=audit, upstream=fake.url))
        secrets = {"SCAN_SECRET": HS_SECRET, "SCAN_OPENAI_KEY": UPSTREAM_KEY}
        with gateway_process(config, tmp_path, port, extra_env=secrets) as gateway:
            await _workload(port)
            gateway.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.process.wait, 15) == 0
            log_text = gateway.logs()
        assert fake.requests, "the upstream was really called"
        assert UPSTREAM_KEY in fake.requests[0].headers["authorization"], "the key went upstream"
    audit_text = audit.read_text()
    assert audit_text.count("\n") >= 8, "the workload was audited"
    assert leaks(log_text) == []
    assert leaks(audit_text) == []


async def _workload(port: int) -> None:
    token = sign(claims("scan", sub="scanner"), HS_SECRET, "HS256")
    good = (("authorization", f"Bearer {token}"),)
    forged = (("authorization", f"Bearer {sign(claims('scan'), HS_SECRET + 'x', 'HS256')}"),)
    prompt = f"please keep this private {PROMPT_MARKER}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        await stub.Chat(chat_request(prompt), metadata=good, timeout=5)
        await stub.Chat(chat_request(prompt, model="gpt"), metadata=good, timeout=5)
        _ = [c async for c in stub.StreamChat(chat_request(prompt), metadata=good, timeout=5)]
        await stub.Embed(
            embed_pb2.EmbedRequest(model="mock-embed", inputs=[prompt]), metadata=good, timeout=5
        )
        for metadata, request in (
            (forged, chat_request(prompt)),
            ((), chat_request(prompt)),
            ((*good, ("x-mock-fail-status", "500")), chat_request(prompt)),
            (good, chat_request(f"fail {prompt}", model="gpt")),
            (good, chat_request(prompt, model="no-such-model")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Chat(request, metadata=metadata, timeout=5)
            assert PROMPT_MARKER not in (caught.value.details() or "")
            assert UPSTREAM_KEY not in (caught.value.details() or "")


def test_no_log_or_audit_file_of_the_suite_holds_a_secret(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.getbasetemp()
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl")]
    assert files, "the suite wrote logs and audit files"
    found = {str(p.relative_to(base)): leaks(p.read_text(errors="replace")) for p in files}
    assert {name: hits for name, hits in found.items() if hits} == {}
