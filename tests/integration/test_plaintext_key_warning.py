"""A provider key that would travel over plain http:// to another host is warned about,
by `check-config` and at start-up; loopback and https:// are not."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.support import PYTHON, ROOT, free_port, gateway_process, subprocess_env

KEY = "sk-plaintext-warning-key-41c7"
CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
auth: {{disabled: true}}
providers:
  - {{name: mock, mock: {{}}}}
  - {{name: remote-vllm, api_key_env: WARN_TEST_KEY, base_url: "http://10.255.0.7:8000/v1", openai_compatible: {{}}}}
  - {{name: local-vllm, api_key_env: WARN_TEST_KEY, base_url: "http://127.0.0.1:8000/v1", openai_compatible: {{}}}}
  - {{name: tls-vllm, api_key_env: WARN_TEST_KEY, base_url: "https://10.255.0.7/v1", openai_compatible: {{}}}}
models:
  - {{alias: mock, provider: mock}}
"""
WARNING = (
    'provider "remote-vllm": its API key would be sent over plain http:// to 10.255.0.7; '
    "use https://"
)


def _config(tmp_path: Path, port: int = 50051) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.format(port=port))
    return path


def test_check_config_warns_and_still_accepts(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "service", "check-config", "--config", str(_config(tmp_path))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**subprocess_env(), "WARN_TEST_KEY": KEY},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path / 'gateway.yaml'}: ok"
    assert result.stderr.splitlines() == [f"warning: {WARNING}"]
    assert KEY not in result.stderr + result.stdout


def test_start_up_logs_the_warning(tmp_path: Path) -> None:
    port = free_port()
    env = {"WARN_TEST_KEY": KEY}
    with gateway_process(_config(tmp_path, port), tmp_path, port, extra_env=env) as gateway:
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(15) == 0
        logs = gateway.logs()
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    warnings = [r["message"] for r in records if r["level"] == "warning"]
    assert WARNING in warnings
    assert not [w for w in warnings if "local-vllm" in w or "tls-vllm" in w]
    assert KEY not in logs
