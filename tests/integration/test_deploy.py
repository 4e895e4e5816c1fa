"""The Kubernetes manifests and the image build: every manifest valid against the
Kubernetes API schema, the config in the ConfigMap valid for the gateway with exactly
the variables the Deployment provides, probes and ports that match the config, and the
package the Dockerfile builds self-contained and runnable."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from service.config import parse_config, seconds_or
from tests.support import ROOT

MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
# The oldest Kubernetes the manifests need (the preStop `sleep` action): README says so.
MINIMUM_KUBERNETES_VERSION = "1.30.0"


KUSTOMIZATION = MANIFESTS / "kustomization.yaml"


def documents() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(set(MANIFESTS.glob("*.yaml")) - {KUSTOMIZATION}):
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def container() -> dict[str, Any]:
    deployment = documents()["Deployment/llm-gateway"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def gateway_config_text() -> str:
    return str(documents()["ConfigMap/llm-gateway-config"]["data"]["config.yaml"])


@pytest.mark.parametrize("name", sorted(documents()))
def test_every_manifest_is_valid_for_the_kubernetes_api(name: str) -> None:
    try:
        kubernetes_validate.validate(documents()[name], KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{name}: {error.message} at {list(error.path)}")


@pytest.mark.parametrize("name", sorted(documents()))
def test_every_manifest_is_valid_for_the_oldest_kubernetes_readme_names(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    oldest = MINIMUM_KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert f"Kubernetes {oldest} or later" in readme, "README states the minimum version"
    try:
        kubernetes_validate.validate(documents()[name], MINIMUM_KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{name}: {error.message} at {list(error.path)}")


def test_the_shipped_durations_agree_with_each_other() -> None:
    """A rollout or a connection's end never cuts a call the gateway allows: the
    connection grace and the shutdown grace each cover the longest call
    (max_call_duration, which also caps callers' longer deadlines), and Kubernetes
    waits for the preStop pause plus the shutdown grace before it kills the pod."""
    server = parse_config(
        gateway_config_text(), {"LLM_GATEWAY_REDIS_URL": "redis://redis:6379/0"}
    ).config.server
    longest_call = seconds_or(server, "max_call_duration", 300.0)
    keepalive = server.keepalive
    assert keepalive.HasField("max_connection_age"), "clients rebalance across replicas"
    age = seconds_or(keepalive, "max_connection_age", 0.0)
    age_grace = seconds_or(keepalive, "max_connection_age_grace", 300.0)
    # A call may start an instant before the connection reaches its age.
    assert age_grace > longest_call, "max_connection_age_grace covers the longest call"
    assert age + age_grace > longest_call
    drain = seconds_or(server, "shutdown_grace", 10.0)
    assert drain >= longest_call, "shutdown_grace drains every call the gateway allows"
    gateway = container()
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    pod = documents()["Deployment/llm-gateway"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > pause + drain, "Kubernetes waits for the drain"
    readme = (ROOT / "README.md").read_text()
    assert f"({drain:g} s)" in readme, "README names the drain the manifests promise"


def test_the_kustomization_assembles_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    manifests = {p.name for p in MANIFESTS.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert set(listed) == manifests - {"secret.example.yaml"}
    (image,) = kustomization["images"]
    assert container()["image"] == f"{image['name']}:{image['newTag']}"


def test_the_autoscaler_scales_the_deployment_on_cpu_within_the_disruption_budget() -> None:
    autoscaler = documents()["HorizontalPodAutoscaler/llm-gateway"]["spec"]
    deployment = documents()["Deployment/llm-gateway"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in container()["resources"]["requests"], "utilization is a share of the request"
    budget = documents()["PodDisruptionBudget/llm-gateway"]["spec"]
    assert autoscaler["minReplicas"] > budget["minAvailable"], "a drain can always evict one"
    assert autoscaler["maxReplicas"] > autoscaler["minReplicas"]


def test_the_network_policy_lets_in_only_grpc_and_metrics() -> None:
    policy = documents()["NetworkPolicy/llm-gateway"]["spec"]
    pod = documents()["Deployment/llm-gateway"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod.items()
    assert policy["policyTypes"] == ["Ingress"]
    opened = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert sorted(opened) == sorted(p["name"] for p in container()["ports"])
    metrics_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == "metrics")
    assert metrics_rule["from"], "metrics only from the monitoring namespace"


def test_the_configmap_config_is_valid_with_the_deployments_environment() -> None:
    provided = {entry["name"]: "set-by-kubernetes" for entry in container()["env"]}
    text = gateway_config_text()
    referenced = set(re.findall(r"\b(?:url_env|api_key_env|secret_env): (\w+)", text))
    assert referenced <= set(provided), "every variable the config names comes from the pod"
    environ = {**provided, "LLM_GATEWAY_REDIS_URL": "redis://redis:6379/0"}
    loaded = parse_config(text, environ)
    assert loaded.config.limits.HasField("redis"), "replicas share their limits"
    assert loaded.skipped_providers == ()


def test_probes_ports_and_shutdown_fit_the_config() -> None:
    loaded = parse_config(
        gateway_config_text(), {"LLM_GATEWAY_REDIS_URL": "redis://redis:6379/0"}
    ).config
    gateway = container()
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    assert ports == {"grpc": loaded.server.port, "metrics": loaded.metrics.port}
    # The endpoint is loopback-only by default: the pod's config opens it to Prometheus.
    assert loaded.metrics.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["grpc"]["port"] == loaded.server.port, probe
    service = documents()["Service/llm-gateway"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    pod = documents()["Deployment/llm-gateway"]["spec"]["template"]["spec"]
    drain = seconds_or(loaded.server, "shutdown_grace", 10.0)
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pause, "in-flight calls can finish"
    mount = gateway["volumeMounts"][0]["mountPath"]
    assert gateway["args"] == ["--config", f"{mount}/config.yaml"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'CMD ["--config", "{mount}/config.yaml"]' in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.M)
    assert pod["securityContext"]["runAsUser"] == 10001


# A wheel built as the image's build stage builds it (setuptools from the lock file): a
# few seconds on an idle machine, far more on a busy one.
@pytest.mark.timeout(300)
def test_the_image_package_is_self_contained(tmp_path: Path) -> None:
    """What the Dockerfile's build stage runs (`pip wheel --no-deps --no-build-isolation .`),
    then the package alone,
    away from the source tree, checking the ConfigMap's config."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("llm_gateway-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
        entry_points = archive.read(
            next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        ).decode()
    assert "llm-gateway = service.__main__:main" in entry_points
    config = tmp_path / "config.yaml"
    config.write_text(gateway_config_text())
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path[0] = sys.argv.pop(1); "
            "import service; assert not service.__file__.startswith(sys.argv[1]); "
            "from service.__main__ import main; sys.exit(main(sys.argv[2:]))",
            str(unpacked),
            str(ROOT),
            "check-config",
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "LLM_GATEWAY_REDIS_URL": "redis://redis:6379/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(": ok")


def test_the_image_installs_only_locked_versions() -> None:
    """Every dependency of the wheel is pinned with hashes in requirements/runtime.txt,
    which the image installs with --require-hashes (make lock-check keeps the lock
    files matching pyproject.toml)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs, "the image installs packages"
    for line in installs:
        assert "--require-hashes" in line or "--no-deps" in line, line
    assert "--require-hashes -r requirements/build.txt" in dockerfile
    assert "--require-hashes -r /tmp/runtime.txt" in dockerfile
    locked = dict(
        re.findall(
            r"^([A-Za-z0-9_.-]+)==(\S+) \\$",
            (ROOT / "requirements" / "runtime.txt").read_text(),
            re.M,
        )
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    normalized = {name.lower().replace("_", "-"): version for name, version in locked.items()}
    assert len(project["dependencies"]) >= 15
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower().replace("_", "-")
        assert name in normalized, f"{name} is not locked"
        assert requirement.specifier.contains(normalized[name]), f"{name}=={normalized[name]}"
