"""The deployable pieces are consistent with the code: the Dockerfile copies every package and
exposes the ports the manifests probe, and every command in the Kubernetes manifests is one the
`recsvc` CLI accepts, on the shared model store."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from recsvc.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"


def documents() -> list[dict]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def one(kind: str, name: str) -> dict:
    matches = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def pod_of(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_is_multi_stage_non_root_and_copies_every_package() -> None:
    text = dockerfile()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "OPENBLAS_NUM_THREADS=1" in text
    assert re.search(r"^HEALTHCHECK .*CMD recsvc health .*--tls-ca", text, re.M | re.S)
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"recsvc", *setuptools["package-dir"].values()}
    assert folders <= copied, folders - copied
    for source in copied | {"protos"}:
        assert (ROOT / source).is_dir(), source
    assert "RUN pip install ." in text and "grpc_tools.protoc" not in text


def test_the_server_deployment_runs_a_valid_serve_on_the_exposed_ports() -> None:
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", dockerfile(), re.M)[0].split()}
    deployment = one("Deployment", "recsvc-server")
    container = pod_of(deployment)["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.role == "serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {args.port, args.metrics_port} == {ports["grpc"], ports["metrics"]} == exposed
    assert container["readinessProbe"]["grpc"]["port"] == args.port
    assert container["livenessProbe"]["grpc"]["port"] == args.port
    # The liveness service name is one the server registers (SERVING whenever it is up).
    from recsvc.service.server import LIVENESS_SERVICE

    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert args.event_store.startswith("redis://")
    assert args.grace < pod_of(deployment)["terminationGracePeriodSeconds"]
    service = one("Service", "recsvc")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    hpa = one("HorizontalPodAutoscaler", "recsvc-server")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "recsvc-server"
    assert hpa["spec"]["minReplicas"] >= 2


def test_the_retraining_job_publishes_into_the_store_the_servers_read() -> None:
    server_pod = pod_of(one("Deployment", "recsvc-server"))
    job_pod = pod_of(one("CronJob", "recsvc-retrain"))
    serve = build_parser().parse_args(server_pod["containers"][0]["args"])
    train = build_parser().parse_args(job_pod["containers"][0]["args"])
    assert (serve.role, train.role) == ("serve", "train")

    def claim_at(pod: dict, mount_path: Path) -> str:
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        name = next(n for n, path in mounts.items() if Path(path) == mount_path)
        return volumes[name]["persistentVolumeClaim"]["claimName"]

    assert claim_at(job_pod, train.model_dir) == claim_at(server_pod, serve.model_dir)
    assert train.event_store == serve.event_store
    declared = {d["metadata"]["name"] for d in documents() if d["kind"] == "PersistentVolumeClaim"}
    for pod in (server_pod, job_pod):
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in declared
    config_map = one("ConfigMap", "recsvc-job")
    job_config = tomllib.loads(config_map["data"]["job.toml"])
    assert set(job_config) <= set(tomllib.loads((ROOT / "recsvc" / "recsvc.toml").read_text()))


@pytest.mark.parametrize("name", ["model-store.yaml", "redis.yaml", "server.yaml", "retrain.yaml"])
def test_kustomization_lists_every_manifest(name: str) -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert name in kustomization["resources"]
