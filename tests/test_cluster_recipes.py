"""The cluster recipes in cluster/ parse, run this project's command, agree with each other, and
expose nothing publicly. (They are deployed elsewhere; these checks are what can run here.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from sslsearch.cli import build_parser
from sslsearch.config import SPACES_DIR
from sslsearch.schema import resolve_file

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["kind"] for d in docs])
    return found[0]


def _launcher() -> dict[str, Any]:
    (config,) = _docs("ray-cluster.yaml")
    return config


def _rayjob() -> dict[str, Any]:
    return _one(_docs("rayjob.yaml"), "RayJob")


def _pod_specs(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]


def _sweep_args(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "sslsearch.run"], argv
    return argv[3:]


def test_rayjob_runs_the_sweep_on_its_own_cluster_with_shared_storage() -> None:
    job = _rayjob()
    args = build_parser().parse_args(_sweep_args(job["spec"]["entrypoint"]))
    assert args.address == "auto" and args.space == "vicreg.yaml"
    assert resolve_file(args.space, SPACES_DIR, "space").is_file()
    # --storage lies on the ReadWriteMany claim, mounted at the same place on every pod.
    pvc = _one(_docs("rayjob.yaml"), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in _pod_specs(job):
        volume = next(v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {})
                      .get("claimName") == pvc["metadata"]["name"])
        mounts = [m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]
                  if m["name"] == volume]
        assert mounts and all(Path(args.storage).is_relative_to(m) for m in mounts), mounts
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_every_node_runs_the_same_project_image() -> None:
    launcher = _launcher()
    image = launcher["docker"]["image"]
    for node_type in launcher["available_node_types"].values():
        assert node_type.get("docker", {}).get("worker_image", image) == image
    images = {c["image"] for spec in _pod_specs(_rayjob()) for c in spec["containers"]}
    assert images == {image}
    # The launcher copies the MLflow recipe out of that image: the Dockerfile must put it there.
    assert "COPY cluster ./cluster" in (ROOT / "Dockerfile").read_text()
    assert any("/opt/sslsearch/cluster/mlflow-compose.yaml" in c
               for c in launcher["initialization_commands"])


def test_launcher_config_is_valid_for_ray_and_keeps_the_dashboard_on_loopback() -> None:
    launcher = _launcher()
    jsonschema = pytest.importorskip("jsonschema")
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json")
                        .read_text())
    jsonschema.validate(launcher, schema)
    (head_start,) = [c for c in launcher["head_start_ray_commands"] if "ray start" in c]
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (CLUSTER / "ray-cluster.yaml").read_text()
    head = launcher["available_node_types"][launcher["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials run on the workers only
    # Every node mounts the shared filesystem that --storage points to.
    for commands in [launcher["initialization_commands"],
                     *(t["initialization_commands"] for name, t in
                       launcher["available_node_types"].items()
                       if name != launcher["head_node_type"])]:
        assert any("mount -t nfs" in c and "/mnt/shared" in c for c in commands), commands
    assert "-v /mnt/shared:/mnt/shared" in launcher["docker"]["run_options"]


def test_nothing_in_the_kubernetes_recipes_is_exposed_outside_the_cluster() -> None:
    docs = _docs("rayjob.yaml") + _docs("mlflow-server.yaml")
    assert not [d for d in docs if d["kind"] in ("Ingress", "Route", "Gateway")]
    services = [d for d in docs if d["kind"] == "Service"]
    assert services and all(s["spec"]["type"] == "ClusterIP" for s in services)
    head = _rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"].get("dashboard-host", "127.0.0.1") != "0.0.0.0"
    assert "0.0.0.0" not in (CLUSTER / "rayjob.yaml").read_text()


def test_mlflow_server_uses_postgres_and_is_the_one_the_rayjob_logs_to() -> None:
    docs = _docs("mlflow-server.yaml")
    server = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = server["args"]
    assert args[:2] == ["mlflow", "server"]
    assert args[args.index("--backend-store-uri") + 1].startswith("postgresql://")
    postgres = _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert postgres["image"].startswith("postgres:")
    service = _one(docs, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    job_args = build_parser().parse_args(_sweep_args(_rayjob()["spec"]["entrypoint"]))
    assert job_args.tracking_uri == f"http://{service['metadata']['name']}:{port}"
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert f"mlflow:{port}" in hosts  # MLflow 3 rejects Host headers it does not list


def test_mlflow_compose_uses_postgres_and_publishes_on_loopback_only() -> None:
    (compose,) = _docs("mlflow-compose.yaml")
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:") and "ports" not in \
        services["postgres"]
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["command"][:2] == ["mlflow", "server"]
    assert mlflow["ports"] and all(str(p).startswith("127.0.0.1:") for p in mlflow["ports"])
