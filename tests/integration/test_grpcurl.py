"""The README's grpcurl commands, run exactly as written with the real grpcurl binary
against `python -m service` on the default config (only the port differs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PYTHON, ROOT, GatewayProcess, gateway_process, subprocess_env

GRPCURL = Path(PYTHON).parent / "grpcurl"


def readme_grpcurl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("grpcurl ")]


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("grpcurl")
    config = (ROOT / "config" / "default.yaml").read_text()
    assert "port: 50051" in config
    path = tmp / "default.yaml"
    path.write_text(config.replace("port: 50051", "port: 0"))
    with gateway_process(path, tmp) as running:
        yield running


def grpcurl(command: str, gateway: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """Runs a README line as a shell would, with $TOKEN from `service token` (make token)."""
    assert command.startswith("grpcurl ")
    env = subprocess_env()
    env["PATH"] = f"{GRPCURL.parent}{os.pathsep}{env['PATH']}"
    env["TOKEN"] = subprocess.run(
        [PYTHON, "-m", "service", "token", "--sub", "alice", "--config", str(gateway.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    ).stdout.strip()
    line = command.replace("localhost:50051", f"localhost:{gateway.port}")
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, env=env)


def json_documents(text: str) -> list[dict[str, object]]:
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text.rstrip()):
        while text[index].isspace():
            index += 1
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def test_readme_lists_every_rpc() -> None:
    commands = " ".join(readme_grpcurl_commands())
    for needle in (
        " list",
        "describe",
        "Health/Check",
        "/Chat",
        "/StreamChat",
        "/Embed",
        "/ListModels",
        "/GetProviderStats",
        "/CountTokens",
    ):
        assert needle in commands


@pytest.mark.parametrize("command", readme_grpcurl_commands())
def test_readme_grpcurl_command(default_gateway: GatewayProcess, command: str) -> None:
    result = grpcurl(command, default_gateway)
    method = command.rsplit(" ", 1)[-1]
    if "authorization" not in command and "ProviderService/" in command:
        assert result.returncode != 0
        assert "Code: Unauthenticated" in result.stderr
        assert '"reason":"INVALID_CREDENTIALS"' in result.stderr
        return
    if "x-mock-fail-status: 429" in command:
        assert result.returncode != 0
        assert "Code: ResourceExhausted" in result.stderr
        assert '"reason":"RATE_LIMITED"' in result.stderr
        assert "type.googleapis.com/google.rpc.RetryInfo" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    if command.endswith(" list"):
        assert result.stdout.split() == [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "llmgateway.v1.ProviderService",
        ]
    elif command.endswith(" describe llmgateway.v1.ProviderService"):
        for rpc in ("Chat", "StreamChat", "Embed", "ListModels", "GetProviderStats", "CountTokens"):
            assert f"rpc {rpc} (" in result.stdout
    elif command.endswith(" describe llmgateway.v1.ProviderService.Chat"):
        assert result.stdout.startswith("llmgateway.v1.ProviderService.Chat is a method:\n")
        assert "rpc Chat ( .llmgateway.v1.ChatRequest )" in result.stdout
    elif method.endswith("Health/Check"):
        assert json_documents(result.stdout) == [{"status": "SERVING"}]
    elif method.endswith("/Chat"):
        [reply] = json_documents(result.stdout)
        assert reply["message"] == {
            "role": "ROLE_ASSISTANT",
            "parts": [{"text": "Hello from grpcurl"}],
        }
        assert reply["finish_reason"] == "FINISH_REASON_STOP"
    elif method.endswith("/StreamChat"):
        chunks = json_documents(result.stdout)
        words = "Stream these words one by one"
        assert "".join(str(c.get("text_delta", "")) for c in chunks) == words
        assert len(chunks) == len(words.split()) + 1
        assert [c.get("finish_reason") for c in chunks if "finish_reason" in c] == [
            "FINISH_REASON_STOP"
        ]
        assert "usage" in chunks[-1]
    elif method.endswith("/Embed"):
        [reply] = json_documents(result.stdout)
        assert [len(e["values"]) for e in reply["embeddings"]] == [16, 16]  # type: ignore[index, union-attr]
    elif method.endswith("/ListModels"):
        [reply] = json_documents(result.stdout)
        models = {m["alias"]: m for m in reply["models"]}  # type: ignore[index, union-attr]
        # Served now: the mock aliases. The default config's other aliases wait for their
        # providers' keys, which the test environment does not set.
        assert [a for a, m in models.items() if not m.get("unavailable")] == [
            "mock",
            "mock-embed",
        ]
        unavailable = {
            a: m["unavailable_reasons"] for a, m in models.items() if m.get("unavailable")
        }
        assert unavailable == {
            alias: ["PROVIDER_KEY_MISSING"]
            for alias in (
                "claude-haiku",
                "gemini-embed",
                "gemini-flash",
                "gpt-4o-mini",
                "text-embedding-3-small",
            )
        }
    elif method.endswith("/CountTokens"):
        [reply] = json_documents(result.stdout)
        # The mock provider has no counting endpoint: the gateway's estimate.
        assert reply["estimated"] is True and int(str(reply["input_tokens"])) > 0
        assert reply["route"]["provider"] == "mock"  # type: ignore[index]
    elif method.endswith("/GetProviderStats"):
        [reply] = json_documents(result.stdout)
        providers = {p["provider"]: p for p in reply["providers"]}  # type: ignore[index, union-attr]
        assert providers["mock"]["provider_type"] == "mock"
        assert [d.get("key_missing") for d in providers["openai"]["deployments"]] == [True, True]
    else:
        raise AssertionError(f"no expectation for: {command}")


def test_the_default_gateway_says_how_to_get_a_development_token(
    default_gateway: GatewayProcess,
) -> None:
    logs = default_gateway.logs()
    assert "python -m service token --sub alice --config FILE (or make token)" in logs
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "make token" in run_recipe and "service token --sub alice" in run_recipe


def describe(symbol: str, gateway: GatewayProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", f"localhost:{gateway.port}", "describe", symbol],
        capture_output=True,
        text=True,
        timeout=30,
        env=subprocess_env(),
    )


@pytest.mark.parametrize(
    ("symbol", "kind"),
    [
        ("llmgateway.v1.ProviderService", "a service"),
        ("llmgateway.v1.ProviderService.Chat", "a method"),
        ("llmgateway.v1.ProviderService.StreamChat", "a method"),
        ("grpc.health.v1.Health.Watch", "a method"),
        ("grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo", "a method"),
        ("llmgateway.v1.ChatRequest", "a message"),
        ("llmgateway.v1.ChatRequest.model", "a field"),
        ("llmgateway.v1.Part.kind", "a one-of"),
        ("llmgateway.v1.Role", "an enum"),
        ("llmgateway.v1.Role.ROLE_USER", "an enum value"),
        ("grpc.health.v1.HealthCheckResponse.ServingStatus", "an enum"),
        ("grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING", "an enum value"),
        ("google.protobuf.Struct", "a message"),
    ],
)
def test_grpcurl_describes_every_kind_of_symbol(
    default_gateway: GatewayProcess, symbol: str, kind: str
) -> None:
    result = describe(symbol, default_gateway)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{symbol} is {kind}:\n"), result.stdout


def test_grpcurl_describe_of_an_unknown_symbol_fails(default_gateway: GatewayProcess) -> None:
    result = describe("llmgateway.v1.ProviderService.NoSuchMethod", default_gateway)
    assert result.returncode != 0
    assert "Symbol not found" in result.stderr
