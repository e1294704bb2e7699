"""A sweep on a real multi-node Ray cluster, and a worker node lost mid-trial.

The cluster is ``ray.cluster_utils.Cluster``: a head node with no CPUs (it runs the driver, the
GCS and Tune's bookkeeping, never a trial) and two worker nodes with one CPU each, every process on
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) with the dashboard off. The nodes share this
machine's filesystem, which stands in for the NFS that ``--storage`` needs on a real cluster.
The sweep is the real command, ``python -m sslsearch.run``, joining the cluster through
``--address auto`` or ``RAY_ADDRESS``, and logging to a real ``mlflow server`` (the fixture of
tests/test_sweep.py).
Every process is ended by its handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sslsearch.search.tracking import TAG_NODE, TAG_NODES, TAG_TRIAL
from tests.test_sweep import assert_complete_sweep, mlflow_server, runs

__all__ = ["mlflow_server"]  # a fixture: imported for pytest, used by name below


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head (0 CPUs) and two one-CPU worker nodes, all on loopback."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Ray resolves 127.0.0.1 to the machine's address unless told this is a one-host cluster;
    # the env var reaches the nodes' processes and the sweep's driver, the attribute this process.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # `--address auto` turns on token auth when ~/.ray/auth_token exists (a local ray.init() left
    # one); `ray start` does the same on a real cluster, this test cluster does not: keep it off.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    loopback = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    c = Cluster(initialize_head=True, shutdown_at_exit=True,
                head_node_args={"num_cpus": 0, "include_dashboard": False, **loopback})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, **loopback)
        c.wait_for_nodes()
        yield c
    finally:
        # SIGKILL (the graceful stop waits seconds per node), then end what outlived a raylet.
        nodes = [*c.worker_nodes, *([c.head_node] if c.head_node else [])]
        leftovers = [child for node in nodes
                     for child in _children(node.all_processes["raylet"][0].process.pid)]
        for node in nodes:
            c.remove_node(node, allow_graceful=False)
        _kill(leftovers)
        c.shutdown()  # forgets the cluster's address


def _worker_ids(cluster: Any) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def _sweep(args: list[str], cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sslsearch.run", *args], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"sweep still running after {timeout} s:\n{out[-3000:]}") from None
    return out


def test_sweep_runs_its_trials_on_several_nodes_of_a_cluster(
        tmp_path: Path, cluster: Any, mlflow_server: str) -> None:
    proc = _sweep(["--space", "vicreg.yaml", "--experiment", "quick", "--num-samples", "2",
                   "--epochs", "2",
                   "--max-concurrent", "2", "--quiet", "--no-confirm", "--name", "on-cluster",
                   "--storage", str(tmp_path / "shared"), "--tracking-uri", mlflow_server,
                   "--address", "auto"], tmp_path)  # the cluster this machine started last
    out = _finish(proc, timeout=240)
    assert proc.returncode == 0, out[-3000:]

    children = assert_complete_sweep(mlflow_server, n_trials=2, epochs=2)  # each trial once
    nodes = [c.data.tags[TAG_NODE] for c in children]
    # One CPU per worker node, two trials at once: one trial on each worker, none on the head.
    assert set(nodes) == _worker_ids(cluster), nodes
    for child in children:
        assert child.data.tags[TAG_NODES] == child.data.tags[TAG_NODE]  # never moved
    # Checkpoints and sweep state went to --storage, which every node reaches.
    assert (tmp_path / "shared" / "on-cluster" / "best_experiment.yaml").is_file()
    assert len(list((tmp_path / "shared" / "on-cluster").glob("vicreg_*/checkpoint_*"))) >= 2


@pytest.mark.slow  # ~100 s on 2 shared cores: two trials of 4 epochs, one of them twice started
def test_trial_on_a_lost_node_resumes_from_its_checkpoint_on_another_node(
        tmp_path: Path, cluster: Any, mlflow_server: str) -> None:
    epochs = 4
    # Through RAY_ADDRESS this time; grace period = epochs: ASHA stops nothing, every trial runs
    # all its epochs. FailureConfig(max_failures=1) of the quick experiment allows the retry.
    proc = _sweep(["--space", "vicreg.yaml", "--experiment", "quick", "--num-samples", "2",
                   "--epochs", str(epochs),
                   "--grace-period", str(epochs), "--max-concurrent", "2", "--quiet",
                   "--no-confirm", "--name", "lost-node", "--storage", str(tmp_path / "shared"),
                   "--tracking-uri", mlflow_server], tmp_path,
                  env={"RAY_ADDRESS": cluster.address})
    client = MlflowClient(tracking_uri=mlflow_server)
    victim, victim_trial = None, None
    orphans: list[tuple[int, str]] = []
    try:
        deadline = time.time() + 180
        while victim is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            for child in runs(mlflow_server)[1] if _has_experiment(client) else []:
                steps = [m.step for m in client.get_metric_history(child.info.run_id,
                                                                   "val_knn_acc")]
                if steps and max(steps) < epochs:  # mid-trial, with a checkpoint behind it
                    node_id = child.data.tags.get(TAG_NODE)
                    victim = next((n for n in cluster.worker_nodes if n.node_id == node_id),
                                  None)
                    victim_trial = child.data.tags[TAG_TRIAL]
                    break
        assert victim is not None, "no trial was seen mid-run"
        # Its raylet's children (the trial's worker, the agents), to end any that outlive it.
        orphans = _children(victim.all_processes["raylet"][0].process.pid)
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet, workers, the trial
        out = _finish(proc, timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill(orphans)
    assert proc.returncode == 0, out[-3000:]

    # Nothing lost or duplicated: each trial once, every epoch logged once, both completed.
    children = assert_complete_sweep(mlflow_server, n_trials=2, epochs=epochs)
    assert all(c.data.tags.get("trial_status") == "completed" for c in children)
    moved = next(c for c in children if c.data.tags[TAG_TRIAL] == victim_trial)
    path = moved.data.tags[TAG_NODES].split(",")
    assert path[0] == victim.node_id and len(path) == 2 and path[1] in _worker_ids(cluster), path

    # Ray's own record of the trial: epochs strictly increasing across the move, so the new node
    # continued from the last checkpoint instead of starting over at epoch 1.
    results = [json.loads(line) for line in
               next((tmp_path / "shared" / "lost-node").glob(f"*_{victim_trial}/result.json"))
               .read_text().splitlines()]
    epochs_seen = [int(r["epoch"]) for r in results]
    assert epochs_seen == list(range(1, epochs + 1)), epochs_seen
    on_new_node = [int(r["epoch"]) for r in results if r["ray_node_id"] == path[1]]
    assert on_new_node and min(on_new_node) > 1, epochs_seen


@pytest.mark.slow  # 25-40 s: a local Ray, and each trial started twice (max_failures=1)
def test_a_sweep_whose_every_trial_errors_exits_non_zero(tmp_path: Path) -> None:
    """A broken cluster or image fails every trial: the command must not report success."""
    empty = tmp_path / "no-cifar"
    empty.mkdir()
    experiment = tmp_path / "broken.yaml"
    experiment.write_text(yaml.safe_dump({"trial": {"dataset": "cifar10", "data_dir": str(empty),
                                                    "backbone": "small_cnn", "epochs": 1}}))
    proc = _sweep(["--space", "vicreg.yaml", "--experiment", str(experiment), "--num-samples", "1",
                   "--quiet", "--no-confirm", "--storage", str(tmp_path / "results")], tmp_path)
    out = _finish(proc, timeout=180)
    assert proc.returncode == 1, out[-3000:]
    assert "none of the 1 trials reported a result" in out and "errored" in out


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]; [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _started(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""  # starttime, field 22 of stat


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid):
            found.append((int(entry.name), _started(int(entry.name))))
    return found


def _kill(processes: list[tuple[int, str]]) -> None:
    for pid, started in processes:
        if _started(pid) == started:  # still that process, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _has_experiment(client: MlflowClient) -> bool:
    return client.get_experiment_by_name("sslsearch") is not None
