"""The terminal client, `llm-gateway chat` and `llm-gateway models`, run as a command
against the running gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.fakes.anthropic_fake import API_KEY, AnthropicFake
from tests.fakes.keys import HS_SECRET, claims, sign
from tests.integration.test_tls import issue, make_ca
from tests.support import PYTHON, ROOT, running_gateway, subprocess_env

CONFIG = """
server: {{host: 127.0.0.1, port: 0{tls}}}
routing: {{retry: {{max_attempts: 1}}, breaker: {{disabled: true}}}}
auth:
  issuers:
    - {{issuer: dev, audiences: [llm-gateway], algorithms: [HS256], secret_env: GW_SECRET}}
limits:
  subjects:
    limited: {{requests_per_minute: 1}}
providers:
  - {{name: mock, mock: {{}}}}
  - {{name: claude, api_key_env: ANTHROPIC_TEST_KEY, base_url: "{claude}/v1", anthropic: {{}}}}
  - {{name: nokey, api_key_env: TERMINAL_UNSET_KEY, skip_if_key_missing: true, openai: {{}}}}
models:
  - alias: mock
    provider: mock
    upstream_model: mock-echo-1
    context_window: 32768
    pricing: {{input_per_million: 1000, output_per_million: 2000}}
  - {{alias: mock-embed, provider: mock, upstream_model: mock-embed-1, capabilities: {{embeddings: true}}}}
  - {{alias: claude, provider: claude, upstream_model: claude-sonnet-4-5}}
  - {{alias: keyless, provider: nokey, upstream_model: gpt-4o-mini}}
"""
ENVIRON = {"GW_SECRET": HS_SECRET, "ANTHROPIC_TEST_KEY": API_KEY}
DIM, RESET = "\x1b[2m", "\x1b[0m"


def token(subject: str = "terminal-user") -> str:
    return sign(claims("dev", sub=subject), HS_SECRET, "HS256")


async def command(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`llm-gateway ARGS` as a process (the console script runs service.__main__)."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**subprocess_env(), **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_chat_streams_the_reply_and_ends_with_route_usage_cost_and_timing() -> None:
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls="", claude=fake.url), environ=ENVIRON) as gateway,
    ):
        target = f"127.0.0.1:{gateway.port}"
        code, out, err = await command(
            "chat",
            "--target",
            target,
            "--token",
            token(),
            "--model",
            "mock",
            "Hello there, terminal",
        )
        piped_code, piped_out, _ = await command(
            "chat",
            "--target",
            target,
            "--model",
            "mock",
            stdin="a prompt from stdin",
            env={"LLM_GATEWAY_TOKEN": token()},
        )
    assert code == 0, err
    assert out == "Hello there, terminal\n", "stdout carries the reply alone"
    (summary,) = err.splitlines()
    fields = summary.strip("[]").split(" · ")
    assert fields[:2] == ["mock/mock-echo-1", "1 attempt"]
    assert fields[2] == "3 in + 3 out tokens"
    assert fields[3] == f"${(3 * 1000 + 3 * 2000) / 1e6:.6f}"
    assert fields[4] == "stop"
    assert fields[5].startswith("first chunk ") and fields[5].endswith(" ms")
    assert fields[6].startswith("total ")
    assert piped_code == 0
    assert piped_out == "a prompt from stdin\n"


async def test_chat_json_prints_each_response_as_a_json_line() -> None:
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls="", claude=fake.url), environ=ENVIRON) as gateway,
    ):
        code, out, err = await command(
            "chat", "--target", f"127.0.0.1:{gateway.port}", "--token", token(),
            "--model", "mock", "--json", "one two three four",
        )  # fmt: skip
    assert code == 0, err
    assert err == "", "JSON mode prints no summary line"
    chunks = [json.loads(line) for line in out.splitlines()]
    assert len(chunks) >= 3
    assert "".join(c.get("textDelta", "") for c in chunks) == "one two three four"
    assert chunks[0]["route"]["provider"] == "mock"
    assert chunks[-1]["usage"]["outputTokens"] == "4"


async def test_chat_shows_reasoning_dimmed_before_the_answer() -> None:
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls="", claude=fake.url), environ=ENVIRON) as gateway,
    ):
        target = f"127.0.0.1:{gateway.port}"
        base = ["chat", "--target", target, "--token", token(), "--model", "claude"]
        extra = ["--max-tokens", "2000", "--reasoning-budget", "1024", "What is up?"]
        colored = await command(*base, "--color", "always", *extra)
        plain = await command(*base, *extra)  # not a terminal: no escape codes
    code, out, err = colored
    assert code == 0, err
    reasoning, answer = out.split("\n\n", 1)
    assert reasoning.startswith(DIM) and reasoning.endswith(RESET), repr(reasoning)
    thought = reasoning.replace(DIM, "").replace(RESET, "")
    assert thought, "the fake's thinking block"
    assert DIM not in answer and answer.strip(), repr(answer)
    assert "reasoning)" in err, "the summary counts the reasoning tokens"
    assert plain[0] == 0
    assert "\x1b" not in plain[1]
    assert plain[1] == f"{thought}\n\n{answer}"


async def test_a_failed_call_prints_status_reason_and_retry_hint_and_exits_1() -> None:
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls="", claude=fake.url), environ=ENVIRON) as gateway,
    ):
        target = f"127.0.0.1:{gateway.port}"
        unknown = await command(
            "chat", "--target", target, "--token", token(), "--model", "nope", "hi"
        )
        unauthenticated = await command(
            "chat", "--target", target, "--token", "x.y.z", "--model", "mock", "hi"
        )
        first = await command(
            "chat", "--target", target, "--token", token("limited"), "--model", "mock", "hi"
        )
        limited = await command(
            "chat", "--target", target, "--token", token("limited"), "--model", "mock", "hi"
        )
        empty = await command("chat", "--target", target, "--model", "mock", stdin="  \n")
    code, out, err = unknown
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        'error: NOT_FOUND: model "nope" is not configured; ListModels shows the available ones',
        "reason: MODEL_NOT_FOUND",
    ]
    assert unauthenticated[0] == 1
    assert unauthenticated[2].splitlines()[1] == "reason: INVALID_CREDENTIALS"
    assert first[0] == 0, first[2]
    code, _, err = limited
    lines = err.splitlines()
    assert code == 1
    assert lines[0].startswith("error: RESOURCE_EXHAUSTED: ")
    assert lines[1] == "reason: CALLER_RATE_LIMITED"
    (hint,) = [line for line in lines if line.startswith("retry after ")]
    assert float(hint.split()[2]) > 0
    assert empty[0] == 2 and "empty prompt" in empty[2]


async def test_models_lists_the_aliases() -> None:
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls="", claude=fake.url), environ=ENVIRON) as gateway,
    ):
        target = f"127.0.0.1:{gateway.port}"
        code, out, err = await command("models", "--target", target, "--token", token())
        json_code, json_out, _ = await command(
            "models", "--target", target, "--token", token(), "--json"
        )
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == [
        "ALIAS", "PROVIDER", "UPSTREAM", "MODEL", "CAPABILITIES", "CONTEXT", "AVAILABLE"
    ]  # fmt: skip
    table = {row.split()[0]: row.split() for row in rows}
    assert set(table) == {"mock", "mock-embed", "claude", "keyless"}
    assert table["mock"][1:3] == ["mock", "mock-echo-1"]
    assert table["mock"][4:] == ["32768", "yes"]
    assert table["mock-embed"][3] == "embeddings"
    assert table["keyless"][-2:] == ["no:", "PROVIDER_KEY_MISSING"]
    assert json_code == 0
    assert {json.loads(line)["alias"] for line in json_out.splitlines()} == set(table)


async def test_chat_over_tls_with_the_ca_given(tmp_path: Path) -> None:
    ca, ca_key, ca_cert = make_ca("terminal-ca")
    server = issue("localhost", ca_key, ca_cert, server=True)
    for name, data in (("ca", ca.cert), ("cert", server.cert), ("key", server.key)):
        (tmp_path / f"{name}.pem").write_bytes(data)
    tls = f", tls: {{cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}}}"
    async with (
        AnthropicFake() as fake,
        running_gateway(CONFIG.format(tls=tls, claude=fake.url), environ=ENVIRON) as gateway,
    ):
        target = f"localhost:{gateway.port}"
        trusted = await command(
            "chat", "--target", target, "--ca", str(tmp_path / "ca.pem"), "--token", token(),
            "--model", "mock", "over tls",
        )  # fmt: skip
        plaintext = await command(
            "chat", "--target", target, "--token", token(), "--model", "mock", "hi"
        )
    assert trusted[0] == 0, trusted[2]
    assert trusted[1] == "over tls\n"
    assert plaintext[0] == 1
    assert plaintext[2].startswith("error: UNAVAILABLE")
