"""End to end: the main command, a real MLflow server, SIGKILL mid-sweep, resume.

These start real Ray and MLflow processes on 127.0.0.1 (Ray's dashboard off) and end every process
they start by its handle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from sslsearch.reporting.summary import summarize
from sslsearch.results import budget, budget_line
from sslsearch.search.tracking import TAG_ROLE, TAG_TRIAL

# Sweeps small enough for the default suite: digits (quick.yaml), a tiny CNN, a few epochs.
# --no-confirm: confirmation on fresh seeds has its own tests (tests/test_confirm.py).
SMALL = ["--experiment", "quick", "--num-samples", "4", "--epochs", "3", "--max-concurrent", "2",
         "--quiet", "--no-confirm"]


def sslsearch_run(args: list[str], cwd: Path, timeout: float = 300
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sslsearch.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def runs(uri: str) -> tuple[list[object], list[object]]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sslsearch")
    assert exp is not None
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == "parent"]
    children = [r for r in all_runs if r.data.tags.get(TAG_ROLE) == "trial"]
    return parents, children


def assert_complete_sweep(uri: str, n_trials: int, epochs: int) -> list[object]:
    client = MlflowClient(tracking_uri=uri)
    parents, children = runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[TAG_TRIAL] for c in children]
    assert len(trial_ids) == n_trials and len(set(trial_ids)) == n_trials, trial_ids
    for child in children:
        assert child.info.status in ("FINISHED", "FAILED"), child.info.status
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "base_lr" in child.data.params and "method" in child.data.params
        history = client.get_metric_history(child.info.run_id, "val_knn_acc")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps[0] == 1, steps  # no epoch logged twice
        if child.data.tags.get("trial_status") == "completed":
            assert steps == list(range(1, epochs + 1))
            assert {"probe_val_acc", "probe_test_acc"} <= set(child.data.metrics)
    return children


def assert_parent_baselines(uri: str) -> None:
    """The sweep's run holds the split's raw-pixel baselines, each logged exactly once."""
    client = MlflowClient(tracking_uri=uri)
    parents, children = runs(uri)
    metrics = parents[0].data.metrics
    for key in ("raw_knn_acc", "raw_test_knn_acc", "raw_probe_acc", "raw_probe_test_acc"):
        assert 0 < metrics[key] <= 1, (key, metrics)
        history = client.get_metric_history(parents[0].info.run_id, key)
        assert len(history) == 1, (key, history)  # not again on resume
    done = [c for c in children if c.data.tags.get("trial_status") == "completed"]
    assert done and all(c.data.metrics["raw_knn_acc"] == metrics["raw_knn_acc"]
                        and "init_knn_acc" in c.data.metrics for c in done)


def assert_data_and_model(uri: str, folder: Path) -> None:
    """Every child run's dataset input is the quick experiment's digits split (name and digest:
    the Dataset column); the sweep's run has the exported encoder as its logged model (the
    Models column), safetensors and config.json, whose provenance names the same data."""
    from sslsearch.config import load_experiment
    from sslsearch.data.digest import dataset_digest
    from sslsearch.trial.trial import load_data, select_device

    digest = dataset_digest(load_data(load_experiment("quick").trial, select_device("cpu")))
    client = MlflowClient(tracking_uri=uri)
    parents, children = runs(uri)
    for child in children:
        inputs = [(d.dataset.name, d.dataset.digest) for d in child.inputs.dataset_inputs]
        assert inputs == [("digits", digest)], inputs
    parent = parents[0]
    models = client.search_logged_models([parent.info.experiment_id])
    assert [(m.name, m.source_run_id, str(m.status)) for m in models] == [
        ("best_encoder", parent.info.run_id, "READY")]
    assert [o.model_id for o in parent.outputs.model_outputs] == [models[0].model_id]
    files = {f.path for f in client.list_logged_model_artifacts(models[0].model_id)}
    assert files == {"encoder.safetensors", "config.json"}
    assert models[0].params["dataset.digest"] == digest
    origin = json.loads((folder / "best_encoder" / "config.json").read_text())["provenance"]
    assert origin["dataset"]["digest"] == digest and origin["sweep_id"] == folder.name
    assert origin["baselines"]["raw_knn_acc"] == parent.data.metrics["raw_knn_acc"]


def start_mlflow_server(tmp_path: Path, port: int | None = None
                        ) -> tuple[subprocess.Popen[bytes], str]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port, or ``port``) with a sqlite backend in
    ``tmp_path``, answering /health; its own process group, for killpg."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite backend."""
    proc, uri = start_mlflow_server(tmp_path)
    try:
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# Slow (about 2 minutes): the default suite keeps the same contract in
# tests/test_faults.py::test_driver_killed_inside_a_callback_resumes_with_nothing_lost (a SIGKILLed
# driver, a resume, no trial lost or duplicated, every MLflow child FINISHED) and the parent run's
# baselines across a resume in tests/test_baselines_report.py.
@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_without_loss_or_duplicates(
        tmp_path: Path, mlflow_server: str) -> None:
    storage = tmp_path / "results"
    args = ["--space", "vicreg.yaml", *SMALL, "--name", "killed", "--storage", str(storage),
            "--tracking-uri", mlflow_server]
    proc = subprocess.Popen([sys.executable, "-m", "sslsearch.run", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    finished = 0
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # kill once a trial has finished and others are mid-run
            lines.append(line)
            finished += " finished (" in line or "stopped early" in line
            if finished >= 1:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    assert finished >= 1, "".join(lines[-30:])
    # The killed driver left runs RUNNING; the resume must close them, not duplicate them.
    _, children = runs(mlflow_server)
    assert any(c.info.status == "RUNNING" for c in children)

    out = sslsearch_run(["--resume", "killed", "--storage", str(storage), "--quiet"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    children = assert_complete_sweep(mlflow_server, n_trials=4, epochs=3)
    assert not any(c.info.status == "RUNNING" for c in children)
    assert_parent_baselines(mlflow_server)
    assert (storage / "killed" / "best_experiment.yaml").is_file()


# A fixed start (the space's `initial:`) so that ASHA has something to stop: on digits the val kNN
# saturates (random init 0.986; TPE's draws 0.979-0.993, in steps of 1/144) and ties at a rung
# never stop a trial, so whether it stopped any was chance. Trials 1-2 run quick.yaml's setting;
# 3-4 an lr 150x higher (val kNN 0.90 after epoch 1), and reach the first rung after 1-2 did.
ASHA_DESIGN = """
initial:
  - {base_lr: 0.002, batch_size: 128}
  - {base_lr: 0.002, batch_size: 128}
  - {base_lr: 0.3, batch_size: 128}
  - {base_lr: 0.3, batch_size: 128}
"""


def test_default_sqlite_sweep_asha_stops_some(tmp_path: Path) -> None:
    from sslsearch.config import SPACES_DIR

    space = tmp_path / "simclr_asha.yaml"
    space.write_text((SPACES_DIR / "simclr.yaml").read_text() + ASHA_DESIGN)
    out = sslsearch_run(["--space", str(space), "--experiment", "quick", "--num-samples", "6",
                         "--epochs", "4", "--quiet",
                         "--no-confirm", "--grace-period", "1", "--max-concurrent", "2",
                         "--name", "asha", "--storage", "results"],
                        tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for chatter in ("Token authentication is enabled", "Creating initial MLflow database",
                    "A new study created"):  # the libraries' start-up lines (sslsearch.console)
        assert chatter not in out.stdout + out.stderr, chatter
    assert (tmp_path / "mlflow.db").is_file()  # the default tracking store, in the cwd
    children = assert_complete_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", 6, 4)
    statuses = [c.data.tags.get("trial_status") for c in children]
    assert "stopped_early" in statuses and "completed" in statuses, statuses
    assert "Best trial per method" in out.stdout and "workflowType=machine_learning" in out.stdout
    assert "Budget: 6 trials: " in out.stdout and "trial-epochs trained of 24 " in out.stdout
    assert_parent_baselines(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert_data_and_model(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results" / "asha")
    summary = (tmp_path / "results" / "asha" / "summary.md").read_text()
    assert "**Budget**: 6 trials: " in summary and "(6 trials × 4 epochs): ASHA saved " in summary
    assert "**Baselines on this split**: raw pixels (standardised) val kNN 0." in summary
    assert "vs raw pixels" in summary and "vs random init" in summary
    best = (tmp_path / "results" / "asha" / "best_experiment.yaml")
    # The exported best config is a ready-to-run experiment.
    run = subprocess.run([sys.executable, "-m", "sslsearch.train", "--experiment", str(best),
                          "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def test_resume_refuses_a_folder_without_a_sweep(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = sslsearch_run(["--resume", str(tmp_path / "empty")], tmp_path)
    assert out.returncode == 2
    assert "holds no sslsearch sweep" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------
# Unit tests on hand-built results (no sweep)

BASE = {"epochs": 4}
PROBE = {"probe_val_acc": 0.9, "probe_test_acc": 0.88}


def _result(trial_id: str, metrics: dict[str, Any], error: Exception | None = None,
            epochs_logged: list[float] | None = None, **config: Any) -> Any:
    """A stand-in for a Ray ``Result``: what ``summarize`` and ``budget`` read."""
    import pandas as pd

    return SimpleNamespace(
        metrics={"trial_id": trial_id, **metrics}, error=error, path=f"/x/{trial_id}",
        config={"_base": BASE, "method": "simclr", "base_lr": 0.001, **config}, checkpoint=None,
        metrics_dataframe=pd.DataFrame({"epoch": epochs_logged or []}))


def test_budget_counts_epochs_trained_planned_and_saved_by_asha() -> None:
    results = [
        _result("fin", {"epoch": 4.0, "val_knn_acc": 0.8, **PROBE}),
        _result("noprobe", {"epoch": 4.0, "val_knn_acc": 0.85}),  # probe: false, all 4 epochs
        _result("asha1", {"epoch": 1.0, "val_knn_acc": 0.5}),
        _result("asha2", {"epoch": 2.0, "val_knn_acc": 0.6}),
        # NaN in epoch 3: the placeholder result has no epoch; its progress file says 2
        _result("nan", {"val_knn_acc": 0.0, "failure_reason": "nan_loss"},
                epochs_logged=[1.0, 2.0]),
        _result("collapsed", {"epoch": 3.0, "val_knn_acc": 0.2, "failure_reason": "collapsed"}),
        _result("err", {"epoch": 1.0, "val_knn_acc": 0.4}, error=RuntimeError("node lost")),
    ]
    b = budget(results)
    assert (b.trials, b.finished, b.stopped_early, b.failed) == (7, 2, 2, 3)
    assert (b.trained, b.planned) == (4 + 4 + 1 + 2 + 2 + 3 + 1, 7 * 4)
    assert (b.saved_by_asha, b.cut_by_failures) == (3 + 2, 2 + 1 + 3)
    assert b.trained + b.saved_by_asha + b.cut_by_failures == b.planned
    line = ("**Budget**: 7 trials: 2 finished, 2 stopped early by ASHA, 3 failed. 17 trial-epochs "
            "trained of 28 without early stopping (7 trials × 4 epochs): ASHA saved 5 (18 %); "
            "failures ended 6 earlier.\n")
    assert budget_line(b) == line

    text, rows = summarize(results, "val_knn_acc", "max")
    assert line in text
    status = {r["trial_id"]: r["status"] for r in rows}
    assert status == {"fin": "finished", "noprobe": "finished", "asha1": "stopped early",
                      "asha2": "stopped early", "nan": "nan_loss", "collapsed": "collapsed",
                      "err": "error"}
    # Ranked by the search's metric, finished trials first (a probe only breaks ties).
    assert [r["trial_id"] for r in rows][:4] == ["noprobe", "fin", "asha2", "asha1"]


def test_budget_with_searched_epochs_sums_each_trials_own() -> None:
    results = [_result("short", {"epoch": 2.0, "val_knn_acc": 0.5}, epochs=2),
               _result("long", {"epoch": 3.0, "val_knn_acc": 0.6}, epochs=6)]
    b = budget(results)
    assert (b.finished, b.stopped_early, b.trained, b.planned, b.saved_by_asha) == (1, 1, 5, 8, 3)
    assert b.epochs_per_trial is None and "(Σ configured epochs)" in budget_line(b)


def test_progress_line_says_finished_for_a_trial_without_probe(
        capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.search.sweep import Progress

    progress = Progress("val_knn_acc", total=3, per_epoch=False)
    config = {"_base": BASE, "method": "simclr"}
    for trial_id, last in (("noprobe", {"epoch": 4.0}), ("asha", {"epoch": 2.0}),
                           ("nan", {"failure_reason": "nan_loss"})):
        trial = SimpleNamespace(trial_id=trial_id, config=config, last_result=last)
        progress.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out.splitlines()
    assert out == ["trial noprobe finished (1/3 done)",
                   "trial asha stopped early by ASHA (2/3 done)",
                   "trial nan ended: nan_loss (3/3 done)"]


# ------------------------------------------------------------------------------------------------
# How a trial ended, in MLflow: sslsearch.results.trial_status against the trial's own epochs


def test_mlflow_outcome_is_trial_status_against_the_trials_own_epochs() -> None:
    from sslsearch.search.tracking import outcome

    exp = {"epochs": 3, "probe": True}
    completed = ("FINISHED", {"trial_status": "completed"})
    stopped = ("FINISHED", {"trial_status": "stopped_early", "stopped_by": "scheduler"})
    # probe: false, every epoch: finished, though it has no probe_val_acc
    assert outcome({"epoch": 3.0}, 3, {"_base": {**exp, "probe": False},
                                       "method": "simclr"}) == completed
    # searched epochs: 2 of 2 is finished (the experiment says 3), 3 of 6 is not
    assert outcome({"epoch": 2.0}, 3, {"_base": exp, "method": "simclr", "epochs": 2}) == completed
    assert outcome({"epoch": 2.0, "probe_val_acc": 0.9}, 3,
                   {"_base": exp, "method": "simclr", "epochs": 2, "probe": False}) == completed
    assert outcome({"epoch": 3.0}, 3, {"_base": exp, "method": "simclr", "epochs": 6}) == stopped
    assert outcome({"epoch": 1.0}, 3, {"_base": exp, "method": "simclr"}) == stopped
    # Ray's results carry the trial's config: end_sweep passes only the result
    assert outcome({"epoch": 2.0, "config": {"_base": exp, "method": "simclr", "epochs": 2}},
                   3) == completed
    # a config that says no epochs: the experiment's
    assert outcome({"epoch": 3.0}, 3) == completed and outcome({"epoch": 2.0}, 3) == stopped
    status, tags = outcome({"epoch": 2.0, "failure_reason": "nan_loss", "failure_message": "x"},
                           3, {"_base": exp, "method": "simclr", "epochs": 2})
    assert (status, tags) == ("FAILED", {"trial_status": "failed", "failure_reason": "nan_loss",
                                         "failure_message": "x"})


def test_mlflow_child_runs_end_as_trial_status_says(tmp_path: Path) -> None:
    """Through the callback (a trial's end) and end_sweep (a run a killed driver left RUNNING):
    searched epochs 2 of 2 and probe: false 3 of 3 are completed; 3 of a searched 6 is not. A
    RUNNING run Ray has no result for (Tune never saved its trial, so the resumed sweep re-ran
    its slot under another id) is closed as lost and soft-deleted: no fifth trial."""
    from sslsearch.search.tracking import MLflowTrialCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback = MLflowTrialCallback(uri, "sslsearch", "sweep-x", max_epochs=3,
                                   outbox=tmp_path / "outbox.jsonl")
    base = {"epochs": 3, "probe": True, "dataset": "digits"}
    trials = {"short": ({"epochs": 2}, 2.0), "noprobe": ({"probe": False}, 3.0),
              "long": ({"epochs": 6}, 3.0)}
    for trial_id, (searched, epoch) in trials.items():
        config = {"_base": base, "method": "simclr", **searched}
        trial = SimpleNamespace(trial_id=trial_id, config=config,
                                last_result={"epoch": epoch, "val_knn_acc": 0.5})
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "val_knn_acc": 0.5})
        if trial_id != "long":
            callback.on_trial_complete(0, [], trial)
    lost = SimpleNamespace(trial_id="lost", config={"_base": base, "method": "simclr"})
    callback.on_trial_start(0, [], lost)  # then the driver died, before Tune saved the trial
    # "long" is left RUNNING (its driver died); the sweep's end closes it from Ray's result
    callback.outbox.tracker().end_sweep({"long": {"epoch": 3.0, "config": {"_base": base,
                                                                 "method": "simclr",
                                                                 "epochs": 6}}}, 3)
    _, children = runs(uri)
    got = {c.data.tags[TAG_TRIAL]: (c.info.status, c.data.tags.get("trial_status"))
           for c in children}
    assert got == {"short": ("FINISHED", "completed"), "noprobe": ("FINISHED", "completed"),
                   "long": ("FINISHED", "stopped_early")}
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    deleted = MlflowClient(tracking_uri=uri).search_runs(
        [children[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [(r.data.tags[TAG_TRIAL], r.info.status, r.data.tags["trial_status"])
            for r in deleted] == [("lost", "KILLED", "lost")]


def test_best_experiment_says_how_it_was_chosen(tmp_path: Path) -> None:
    import yaml

    from sslsearch.config import load_experiment
    from sslsearch.results import record
    from sslsearch.run import export_best
    from sslsearch.search.confirm import choose

    exp = load_experiment("quick")
    out = tmp_path / "sweep" / "best_experiment.yaml"
    out.parent.mkdir()
    records = [record(_result("t1", {"epoch": 4.0, "val_knn_acc": 0.8125}), "search"),
               record(_result("t2", {"epoch": 4.0, "val_knn_acc": 0.75, **PROBE}), "search")]
    choice = choose(records, "val_knn_acc", "max")
    assert choice is not None
    doc = yaml.safe_load(export_best(choice, out, exp).read_text())
    text = doc["description"]
    assert "None" not in text and "best trial t1 by val_knn_acc" in text and "0.8125" in text
    assert "not confirmed on other seeds" in text
    assert doc["trial"]["method"] == "simclr" and doc["trial"]["epochs"] == 4


@pytest.mark.parametrize("name", ["../outside", "/tmp/abs", "a/b", "..", ".", "", " x", "a\\b"])
def test_results_folder_refuses_a_name_that_leaves_it(tmp_path: Path, name: str) -> None:
    from sslsearch.errors import ConfigError
    from sslsearch.paths import results_folder

    with pytest.raises(ConfigError, match="--name"):
        results_folder(name, tmp_path / "results")
    assert results_folder("ok-1", tmp_path / "results") == tmp_path / "results" / "ok-1"


@pytest.mark.parametrize("name,compare", [("../outside", False), ("/tmp/abs", True)])
def test_a_name_may_not_write_outside_the_results_folder(tmp_path: Path, name: str,
                                                         compare: bool) -> None:
    args = ["--space", "simclr.yaml", "--name", name, "--storage", "results"]
    out = sslsearch_run(args + (["--compare"] if compare else []), tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--name" in lines[0] and "results folder" in lines[0], lines
    assert not (tmp_path / "outside").exists() and not (tmp_path / "results").exists()
