"""End to end with ``--workers-per-trial 2`` (issue 33): the real command, a local Ray, a loopback
two-node cluster, a SIGKILLed driver and ``--resume``. Slow: every trial starts a Ray Train run of
two gloo worker processes (about 40 s before the first epoch on 2 busy cores).

Each sweep logs to a SQLite MLflow store (MLflow is written by the driver's callback alone, as
for one-worker trials); every process a test starts is ended by its handle.
"""

from __future__ import annotations

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

from sslsearch.search.tracking import TAG_TRIAL
from sslsearch.search.trainable_workers import TRAIN_RUNS, WORKER_NODES_KEY
from tests.test_cluster import _children, _kill
from tests.test_sweep import assert_complete_sweep

pytestmark = pytest.mark.slow

# gloo's own sockets on loopback too (the Ray processes inherit the driver's environment).
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "RAY_AUTH_MODE": "disabled"}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sslsearch.run", *args], cwd=cwd,
                            env={**os.environ, **LOOPBACK, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"sweep still running after {timeout} s:\n{out[-3000:]}") from None
    return out


def _results(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Tune's record of each trial (result.json, appended across restarts), by trial id."""
    return {p.parent.name.rsplit("_", 1)[1]: [json.loads(line) for line in
                                               p.read_text().splitlines()]
            for p in folder.glob("*_*/result.json")}


def test_a_sweep_of_two_trials_on_two_workers_each(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.time()
    proc = _run(["--space", "vicreg.yaml", "--experiment", "quick",
                 "--workers-per-trial", "2", "--num-samples", "2",
                 "--epochs", "3", "--grace-period", "3", "--quiet", "--name", "w2", "--no-confirm",
                 "--storage", str(tmp_path / "results"), "--tracking-uri", uri], tmp_path)
    out = _finish(proc, timeout=900)
    assert proc.returncode == 0, out[-3000:]
    print(f"2 trials x 2 workers x 3 epochs: {time.time() - t0:.0f} s")

    children = assert_complete_sweep(uri, n_trials=2, epochs=3)  # each trial once, each epoch
    assert all(c.data.tags.get("trial_status") == "completed" for c in children)
    folder = tmp_path / "results" / "w2"
    for trial_id, results in _results(folder).items():
        assert [int(r["epoch"]) for r in results] == [1, 2, 3]  # Tune saw each epoch once
        assert all(len(r[WORKER_NODES_KEY].split(",")) == 2 for r in results)  # two workers
        assert any((folder / TRAIN_RUNS / trial_id).glob("checkpoint_*"))  # Train's checkpoints
    assert {c.data.tags[TAG_TRIAL] for c in children} == set(_results(folder))
    assert (folder / "best_encoder").is_dir()  # exported from the Train run's checkpoint
    assert "PlacementGroupCleanerMonitor" not in out and "Reporting training result" not in out


def test_a_request_for_more_workers_than_cpus_exits_2_before_any_trial(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    proc = _run(["--space", "vicreg.yaml", "--experiment", "quick",
                 "--workers-per-trial", str(cores + 2),
                 "--num-samples", "1", "--storage", str(tmp_path / "results"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    out = _finish(proc, timeout=300)
    assert proc.returncode == 2, out[-3000:]
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "a trial could never start" in error[0], out[-3000:]
    assert not (tmp_path / "results").exists()  # no sweep began


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head with one CPU (where the trials' own functions fit) and two one-CPU worker nodes,
    on loopback; a trial's two one-CPU workers therefore land on two different nodes."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in LOOPBACK.items():
        monkeypatch.setenv(key, value)
    loopback = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    c = Cluster(initialize_head=True, shutdown_at_exit=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False, **loopback})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, **loopback)
        c.wait_for_nodes()
        yield c
    finally:
        nodes = [*c.worker_nodes, *([c.head_node] if c.head_node else [])]
        leftovers = [child for node in nodes
                     for child in _children(node.all_processes["raylet"][0].process.pid)]
        for node in nodes:
            c.remove_node(node, allow_graceful=False)
        _kill(leftovers)
        c.shutdown()


def test_a_trials_two_workers_on_two_nodes_of_a_cluster(tmp_path: Path,
                                                         two_node_cluster: Any) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.time()
    proc = _run(["--space", "vicreg.yaml", "--experiment", "quick",
                 "--workers-per-trial", "2", "--num-samples", "2",
                 "--epochs", "2", "--grace-period", "2", "--quiet", "--name", "nodes",
                 "--no-confirm",
                 "--storage", str(tmp_path / "shared"), "--tracking-uri", uri,
                 "--address", "auto"], tmp_path)
    out = _finish(proc, timeout=900)
    assert proc.returncode == 0, out[-3000:]
    print(f"cluster, 2 trials x 2 workers x 2 epochs: {time.time() - t0:.0f} s")
    assert_complete_sweep(uri, n_trials=2, epochs=2)
    nodes = {n.node_id for n in [two_node_cluster.head_node, *two_node_cluster.worker_nodes]}
    for results in _results(tmp_path / "shared" / "nodes").values():
        for r in results:
            workers = r[WORKER_NODES_KEY].split(",")
            assert len(set(workers)) == 2 and set(workers) <= nodes, workers


def test_a_killed_driver_resumes_with_the_multi_worker_trial_at_its_last_epoch(
        tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "results"
    epochs = 4
    proc = _run(["--space", "vicreg.yaml", "--experiment", "quick",
                 "--workers-per-trial", "2", "--num-samples", "2",
                 "--epochs", str(epochs), "--grace-period", str(epochs), "--name", "killed",
                 "--storage", str(storage), "--tracking-uri", uri], tmp_path)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # kill once the first trial is past epoch 2, mid-trial
            lines.append(line)
            if " epoch   2 " in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    assert any(" epoch   2 " in line for line in lines), "".join(lines)[-3000:]
    victim = next(line.split()[2] for line in lines if " epoch   2 " in line)

    t0 = time.time()
    resumed = _run(["--resume", "killed", "--storage", str(storage), "--quiet"], tmp_path)
    out = _finish(resumed, timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    print(f"resume after SIGKILL: {time.time() - t0:.0f} s")

    children = assert_complete_sweep(uri, n_trials=2, epochs=epochs)  # nothing lost or twice
    assert all(c.data.tags.get("trial_status") == "completed" for c in children)
    # The killed trial went on from its last checkpoint (Ray Train's), not from epoch 1: Tune,
    # which restarts it with a fresh record (it holds no Tune checkpoint), saw it report the epoch
    # it resumed at (again, for the log's sake: MLflow kept one of each) and those after it.
    epochs_seen = [int(r["epoch"]) for r in _results(storage / "killed")[victim]]
    assert epochs_seen[0] >= 2 and epochs_seen == list(range(epochs_seen[0], epochs + 1)), \
        epochs_seen


FAULTS = """
method: {choice: [vicreg, simsiam]}
trial:
  optimizer: {choice: [adamw, sgd]}
  base_lr: {loguniform: [0.001, 0.03]}
methods:
  vicreg: {expander_dims: [128, 128]}
  simsiam: {stop_gradient: {choice: [true, false]}}
initial:
  - {method: vicreg, optimizer: sgd, base_lr: 1.0e+6}
  - {method: simsiam, optimizer: adamw, base_lr: 0.02, simsiam.stop_gradient: false}
"""


def test_diverging_and_collapsing_multi_worker_trials_end_with_their_reason(
        tmp_path: Path) -> None:
    """As tests/test_faults.py for one worker: a non-finite loss (raised on both workers at
    once) and a collapse (Tune's stopper) end their trials with their reason, and the next trial
    still gets its workers."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "faults.yaml").write_text(FAULTS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.time()
    proc = _run(["--space", "faults.yaml", "--experiment", "quick",
                 "--workers-per-trial", "2", "--num-samples", "2",
                 "--epochs", "4", "--grace-period", "4", "--quiet", "--name", "faults",
                 "--storage", str(tmp_path / "results"), "--tracking-uri", uri], tmp_path)
    out = _finish(proc, timeout=900)
    assert proc.returncode == 0, out[-3000:]
    print(f"a diverging and a collapsing trial, 2 workers each: {time.time() - t0:.0f} s")
    children = assert_complete_sweep(uri, n_trials=2, epochs=4)
    reasons = {c.data.params["method"]: c.data.tags.get("failure_reason") for c in children}
    assert reasons == {"vicreg": "nan_loss", "simsiam": "collapsed"}, reasons
    assert all(c.info.status == "FAILED" for c in children)
    failed = json.loads(next((tmp_path / "results" / "faults").glob("vicreg_*/failure.json"))
                        .read_text())
    assert failed["reason"] == "nan_loss", failed
    client = MlflowClient(tracking_uri=uri)
    collapsed = next(c for c in children if c.data.params["method"] == "simsiam")
    steps = [m.step for m in client.get_metric_history(collapsed.info.run_id, "val_knn_acc")]
    assert max(steps) <= 3, steps  # stopped within the patience (2 epochs) + 1
