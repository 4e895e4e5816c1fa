"""A Node.js service calling the gateway with @grpc/grpc-js (clients/node), against
`python -m service` on the default config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import PYTHON, ROOT, gateway_process, subprocess_env

NODE_CLIENT = ROOT / "clients" / "node"


def _install() -> None:
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(
            ["npm", "ci", "--silent", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            check=True,
            timeout=300,
            capture_output=True,
        )


def test_node_client_calls_chat_streamchat_and_reads_error_details(tmp_path: Path) -> None:
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm are part of the toolchain"
    _install()
    config = tmp_path / "default.yaml"
    config.write_text(
        (ROOT / "config" / "default.yaml").read_text().replace("port: 50051", "port: 0")
    )
    with gateway_process(config, tmp_path) as gateway:
        env = subprocess_env()
        token = subprocess.run(
            [PYTHON, "-m", "service", "token", "--sub", "node-service", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=True,
        ).stdout.strip()
        result = subprocess.run(
            ["node", "--test", "test.mjs"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "GATEWAY_ADDRESS": f"127.0.0.1:{gateway.port}", "GATEWAY_TOKEN": token},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 4" in result.stdout and "# fail 0" in result.stdout
