"""The alert rules in deploy/prometheus: valid for Prometheus (`promtool check rules`),
passing their unit tests (`promtool test rules`), one firing case per alert, and built
only from metrics and labels a running gateway really exposes."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_metrics import CONFIG
from tests.support import ROOT, chat_request, running_gateway

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
# Labels Prometheus itself adds to every scraped series.
SCRAPE_LABELS = {"instance", "job"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "Debian's prometheus package ships promtool (make test-deps)"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_fires_in_a_unit_test_and_has_a_runbook_line() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = [str(rule["alert"]) for rule in alerts()]
    assert len(names) >= 9
    assert set(names) == firing, "each alert has a case where it fires"
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook"].strip() and annotations["summary"].strip(), rule["alert"]
        labels = rule["labels"]
        assert isinstance(labels, dict) and labels["severity"] in {"page", "ticket"}


def used_names_and_labels(expression: str) -> tuple[set[str], set[str]]:
    names = set(re.findall(r"\bllm_gateway_\w+", expression))
    labels = set(re.findall(r"(\w+)\s*(?:!=|=~|!~|=)\s*\"", expression))
    for group in re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)", expression):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return names, labels


async def test_the_rules_use_only_metrics_and_labels_the_gateway_exposes() -> None:
    async with running_gateway(CONFIG) as gateway:
        fail = (("x-mock-fail-status", "503"), ("x-mock-target", "primary"))
        await gateway.stub.Chat(chat_request("hi", model="main"), metadata=fail, timeout=5)
        _ = [c async for c in gateway.stub.StreamChat(chat_request("a b", model="main"))]
        async with httpx.AsyncClient() as client:
            port = gateway.server.metrics_port
            text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    exposed: dict[str, set[str]] = {}
    model_calls: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
            if sample.name == "llm_gateway_model_calls_total":
                model_calls[sample.labels["model"], sample.labels["code"]] = sample.value
    # The 503 of "main" went to its fallback: both calls succeeded for their caller.
    assert model_calls == {("main", "OK"): 2.0}
    for rule in alerts():
        names, labels = used_names_and_labels(str(rule["expr"]))
        assert names, rule["alert"]
        for name in names:
            assert name in exposed, f"{rule['alert']}: {name} is not exposed"
        available = set().union(*(exposed[name] for name in names))
        assert labels <= available, f"{rule['alert']}: labels {labels - available} do not exist"
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})?", series["series"])
            assert match, series["series"]
            name, matchers = match.groups()
            labels = set(re.findall(r"(\w+)=\"", matchers or ""))
            assert name in exposed, f"test series {name} is not exposed"
            assert labels <= exposed[name] | SCRAPE_LABELS, f"{name}: {labels - exposed[name]}"
