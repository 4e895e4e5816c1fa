"""The contract's compatibility check (make proto-breaking, run by CI): buf breaking with
the WIRE_JSON rules against the previous commit. With buf installed (`make proto-lint`
installs it), the script is run on a scratch repository: a compatible change passes and
a renamed field fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def test_ci_runs_the_check_with_wire_and_json_rules() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make proto-breaking" in ci.splitlines()
    config = yaml.safe_load((ROOT / "buf.yaml").read_text())
    assert config["breaking"]["use"] == ["WIRE_JSON"]
    makefile = (ROOT / "Makefile").read_text()
    assert "proto-breaking:" in makefile and "scripts/proto_breaking.sh" in makefile


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _run(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scripts/proto_breaking.sh"],
        cwd=repo,
        env={**os.environ, "BUF": str(BUF)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by make proto-lint")
def test_a_breaking_change_fails_and_an_addition_passes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "protos", repo / "protos")
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "contract")
    first = _run(repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "first commit" in first.stdout

    chat = repo / "protos" / "llmgateway" / "v1" / "chat.proto"
    text = chat.read_text()
    added = text.replace(
        "  bool strict = 4;\n}",
        "  bool strict = 4;\n  // OPTIONAL. A description.\n  string description = 5;\n}",
    )
    assert added != text
    chat.write_text(added)
    _git(repo, "commit", "-q", "-am", "add a field")
    compatible = _run(repo)
    assert compatible.returncode == 0, compatible.stdout + compatible.stderr

    chat.write_text(added.replace("string schema_name = 2;", "string schema_title = 2;"))
    _git(repo, "commit", "-q", "-am", "rename a field")
    broken = _run(repo)
    assert broken.returncode != 0
    assert "schema_name" in broken.stdout + broken.stderr
