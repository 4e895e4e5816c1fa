"""No token, key or prompt in any log or audit file.

Runs last (tests/conftest.py moves it after every other test): first a workload of its
own against a real gateway process whose log and audit file it then reads, and the same
workload against a gateway served inside the test process, whose log records go to the
session log (tests/conftest.py), with prompts, keys and tokens it can recognise (header
values that are not UTF-8, which grpc's own logger quotes, included); then a scan of every
log and audit file the rest of the suite wrote, the session log included."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from llmgateway.v1 import embed_pb2, provider_service_pb2_grpc

from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, error_body
from tests.fakes.raw_http2 import raw_grpc_call
from tests.fakes.redis_server import REDIS_PASSWORD
from tests.support import DEV_SECRET, chat_request, gateway_process, running_gateway

PROMPT_MARKER = "PROMPT-MARKER-7f3a9c"
# A header value that is not UTF-8 (sent over raw HTTP/2): grpc's own logger quotes such
# values, so the scan looks for it too.
HEADER_MARKER = "HEADER-MARKER-c81d47"
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
    found.extend(marker for marker in (PROMPT_MARKER, HEADER_MARKER) if marker in text)
    return found


def upstream(request: FakeRequest) -> FakeResponse:
    if request.path == "/jwks":
        return FakeResponse.raw(b"down", 503)  # a failed JWKS fetch is logged, with its URL
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


async def test_a_workload_leaves_no_secret_in_logs_or_audit(tmp_path: Path) -> None:
    async with FakeHttpServer(upstream) as fake:
        audit = tmp_path / "audit.jsonl"
        config = tmp_path / "gateway.yaml"
        config.write_text(CONFIG.format(port=0, audit=audit, upstream=fake.url))
        secrets = {"SCAN_SECRET": HS_SECRET, "SCAN_OPENAI_KEY": UPSTREAM_KEY}
        with gateway_process(config, tmp_path, extra_env=secrets) as gateway:
            await _workload(gateway.port)
            gateway.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.process.wait, 15) == 0
            log_text = gateway.logs()
        assert fake.requests, "the upstream was really called"
        assert UPSTREAM_KEY in fake.requests[0].headers["authorization"], "the key went upstream"
    audit_text = audit.read_text()
    assert audit_text.count("\n") >= 8, "the workload was audited"
    assert "Invalid encoding on <" in log_text, "grpc's records of the raw calls are in"
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
        for metadata, request, explained in (
            (forged, chat_request(prompt), False),
            ((), chat_request(prompt), False),
            ((*good, ("x-mock-fail-status", "500")), chat_request(prompt), False),
            (good, chat_request(f"fail {prompt}", model="gpt"), True),
            (good, chat_request(prompt, model="no-such-model"), False),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Chat(request, metadata=metadata, timeout=5)
            details = caught.value.details() or ""
            if explained:
                # The provider's explanation of a refused request reaches the caller who
                # sent it, its own prompt quoted back included, but never the key (and
                # never a log or the audit, scanned below).
                assert PROMPT_MARKER in details and "[redacted]" in details
            else:
                assert PROMPT_MARKER not in details
            assert UPSTREAM_KEY not in details
    # A valid token followed by bytes that are not UTF-8, and another such header value.
    hostile = [
        (b"authorization", f"Bearer {token}".encode() + b"\xff\xfe"),
        (b"x-note", HEADER_MARKER.encode() + b"\xff"),
    ]
    message = chat_request(prompt).SerializeToString()
    for _ in range(3):
        reply = await asyncio.to_thread(
            raw_grpc_call, port, "/llmgateway.v1.ProviderService/Chat", hostile, message
        )
        assert reply.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]


@dataclass
class InProcessRun:
    """What the workload against an in-process gateway added to the session log."""

    session_log: Path
    jwks_url: str
    upstream_requests: int
    audit_text: str
    text: str

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def in_process_run(
    tmp_path_factory: pytest.TempPathFactory, session_log: Path
) -> InProcessRun:
    tmp = tmp_path_factory.mktemp("in-process-scan")
    audit = tmp / "audit.jsonl"
    start = _size(session_log)
    async with FakeHttpServer(upstream) as fake:
        jwks_url = f"{fake.url}/jwks"
        config = CONFIG.format(port=0, audit=audit, upstream=fake.url).replace(
            "  issuers:\n",
            "  issuers:\n    - {issuer: scan-jwks, audiences: [llm-gateway], "
            f'algorithms: [ES256], jwks_url: "{jwks_url}"}}\n',
        )
        secrets = {"SCAN_SECRET": HS_SECRET, "SCAN_OPENAI_KEY": UPSTREAM_KEY}
        async with running_gateway(config, environ=secrets) as gateway:
            await _workload(gateway.port)
        upstream_requests = len([r for r in fake.requests if r.path != "/jwks"])
    text = _read_from(session_log, start)
    return InProcessRun(session_log, jwks_url, upstream_requests, audit.read_text(), text)


def _size(path: Path) -> int:
    return path.stat().st_size


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", errors="replace")


async def test_an_in_process_workload_leaves_no_secret_in_the_session_log(
    in_process_run: InProcessRun,
) -> None:
    run = in_process_run
    assert run.upstream_requests >= 2, "the upstream was really called"
    assert run.audit_text.count("\n") >= 8, "the workload was audited"
    records = run.records()
    by_logger = {r["logger"] for r in records}
    assert {"service.auth.jwks", "service.audit.sink"} <= by_logger, "in-process logs are kept"
    failed = [r for r in records if r["logger"] == "service.auth.jwks"]
    assert failed[0]["url"] == run.jwks_url, "the extra fields are in the session log"
    closed = [r for r in records if r["message"] == "audit log closed"]
    assert closed and closed[-1]["written"] >= 8 and closed[-1]["chain_head"]
    assert leaks(run.text) == []
    assert leaks(run.audit_text) == []


def test_no_log_or_audit_file_of_the_suite_holds_a_secret(
    tmp_path_factory: pytest.TempPathFactory, session_log: Path, in_process_run: InProcessRun
) -> None:
    base = tmp_path_factory.getbasetemp()
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl")]
    assert files, "the suite wrote logs and audit files"
    assert session_log in files, "the log of the in-process gateways is scanned"
    session_text = session_log.read_text(errors="replace")
    assert in_process_run.jwks_url in session_text, "it holds the in-process gateways' records"
    found = {str(p.relative_to(base)): leaks(p.read_text(errors="replace")) for p in files}
    assert {name: hits for name, hits in found.items() if hits} == {}
