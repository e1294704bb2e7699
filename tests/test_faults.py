"""A sweep that meets diverging and collapsing trials finishes, records why, and is not fooled.

The space's ``initial`` points (Optuna's enqueued trials) fix the design, so the test knows which
trial should fail and why: 2 of 8 trials diverge (SGD at lr 1e6), 1 collapses (SimSiam without its
stop-gradient: dimensional collapse, effective rank ≈ 0.04·d), 5 are healthy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from sslsearch.search.space import load_space
from tests.test_sweep import assert_complete_sweep, sslsearch_run

SPACE = """
method: {choice: [vicreg, simsiam]}
trial:
  optimizer: {choice: [adamw, sgd]}
  base_lr: {loguniform: [0.001, 0.03]}
methods:
  vicreg: {expander_dims: [128, 128]}
  simsiam: {stop_gradient: {choice: [true, false]}}
initial:
  - {method: vicreg, optimizer: sgd, base_lr: 1.0e+6}
  - {method: vicreg, optimizer: adamw, base_lr: 0.002}
  - {method: simsiam, optimizer: adamw, base_lr: 0.02, simsiam.stop_gradient: false}
  - {method: simsiam, optimizer: adamw, base_lr: 0.002, simsiam.stop_gradient: true}
  - {method: vicreg, optimizer: sgd, base_lr: 1.0e+6}
  - {method: vicreg, optimizer: adamw, base_lr: 0.004}
  - {method: simsiam, optimizer: adamw, base_lr: 0.003, simsiam.stop_gradient: true}
  - {method: vicreg, optimizer: adamw, base_lr: 0.001}
"""


def test_initial_points_must_name_drawn_parameters(tmp_path: Path) -> None:
    import pytest

    from sslsearch.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(SPACE.replace("simsiam.stop_gradient: false", "simsiam.predictor: 3"))
    with pytest.raises(ConfigError, match=r"initial\[2\]\.simsiam\.predictor"):
        load_space(bad)
    good = tmp_path / "good.yaml"
    good.write_text(SPACE)
    assert len(load_space(good).initial) == 8


def test_diverging_and_collapsing_trials_end_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "faults.yaml").write_text(SPACE)
    out = sslsearch_run(["--space", "faults.yaml", "--experiment", "quick", "--num-samples", "8",
                         "--epochs", "4",
                         "--grace-period", "4", "--max-concurrent", "2", "--name", "faults",
                         "--storage", "results", "--quiet", "--no-confirm"], tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    children = assert_complete_sweep(uri, n_trials=8, epochs=4)
    client = MlflowClient(tracking_uri=uri)
    reasons: dict[str, list[str]] = {"nan": [], "collapsed": [], "healthy": []}
    for child in children:
        params, tags = child.data.params, child.data.tags
        if float(params["base_lr"]) > 1.0:
            kind = "nan"
            assert child.info.status == "FAILED" and tags["failure_reason"] == "nan_loss", tags
        elif params.get("method_params.stop_gradient", params.get("stop_gradient")) == "False":
            kind = "collapsed"
            assert child.info.status == "FAILED" and tags["failure_reason"] == "collapsed", tags
            epochs = [m.step for m in client.get_metric_history(child.info.run_id, "val_knn_acc")]
            assert max(epochs) <= 3, epochs  # stopped within the patience (2 epochs) + 1
        else:
            kind = "healthy"
            assert child.info.status == "FINISHED", tags
            assert tags["trial_status"] == "completed", tags
            assert "failure_reason" not in tags
        reasons[kind].append(child.info.run_id)
    assert [len(v) for v in reasons.values()] == [2, 1, 5], reasons
    # Failed trials never report a NaN metric, and the best trial is a healthy one.
    best = max(children, key=lambda c: c.data.metrics.get("val_knn_acc", -1.0))
    assert best.info.run_id in reasons["healthy"]
    assert "ended: nan_loss" in out.stdout and "ended: collapsed" in out.stdout


def _fake_sweep(folder: Path, space: Path) -> None:
    from sslsearch.search.sweep import space_digest, write_sweep_file

    write_sweep_file(folder, {"space_path": str(space), "space_digest":
                              space_digest(space.read_text())})
    (folder / "tuner.pkl").write_bytes(b"not unpickled by these tests")


def test_resume_refuses_world_writable_and_foreign_folders(tmp_path: Path) -> None:
    import os

    import pytest

    from sslsearch.errors import ConfigError
    from sslsearch.search.sweep import read_sweep_file

    space = tmp_path / "s.yaml"
    space.write_text("method: simclr\n")
    folder = tmp_path / "sweep"
    _fake_sweep(folder, space)
    assert read_sweep_file(folder)["space_path"] == str(space)
    (folder / "tuner.pkl").chmod(0o666)
    with pytest.raises(ConfigError, match=r"tuner\.pkl is world-writable; refusing"):
        read_sweep_file(folder)
    (folder / "tuner.pkl").chmod(0o644)
    real_uid = os.getuid()
    with pytest.MonkeyPatch.context() as mp:  # as if another user ran this process
        mp.setattr(os, "getuid", lambda: real_uid + 1)
        with pytest.raises(ConfigError, match="owned by another user"):
            read_sweep_file(folder)


def test_resume_with_another_space_is_refused(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("method: simclr\n")
    _fake_sweep(tmp_path / "results" / "old", space)
    other = tmp_path / "other.yaml"
    other.write_text("method: vicreg\n")
    out = sslsearch_run(["--resume", "old", "--storage", "results", "--space", str(other)],
                        tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "that sweep searched" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# A driver that dies at chosen points, in the style of Ray Tune's own fault-injection tests: the
# sweep's Progress callback is swapped for one that SIGKILLs the driver at its N-th trial result of
# a stage (search trials or confirmation runs), once per kill point (a marker file per point says
# it already happened, so the same script then resumes cleanly).
KILLER = """
import os, signal, sys
from pathlib import Path
import sslsearch.search.sweep as sweep
from sslsearch.run import main

folder = Path(sys.argv[1])
points = [p.split(":") for p in sys.argv[2].split(",")]  # stage:N, e.g. search:5,confirm:2

class KillingProgress(sweep.Progress):
    seen = {"search": 0, "confirm": 0}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        stage = "confirm" if "_candidate" in trial.config else "search"
        KillingProgress.seen[stage] += 1
        for at_stage, n in points:
            marker = folder / f"killed-{at_stage}-{n}"
            if stage == at_stage and KillingProgress.seen[stage] == int(n) and not marker.exists():
                marker.write_text(trial.trial_id)
                os.kill(os.getpid(), signal.SIGKILL)  # mid-callback: MLflow may lag Tune's state
        super().on_trial_result(iteration, trials, trial, result, **info)

sweep.Progress = KillingProgress
sys.exit(main(sys.argv[3:]))
"""


def test_driver_killed_in_the_search_and_in_the_confirmation_resumes_with_nothing_lost(
        tmp_path: Path) -> None:
    """Killed at the 5th search result, resumed; killed again at the 2nd confirmation result,
    resumed again: every search trial and every confirmation run (each candidate on each fresh
    seed) once in MLflow, all FINISHED, and the answer the confirmed winner's."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    import yaml

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    points = "search:5,confirm:2"
    args = ["--space", "simclr", "--experiment", "quick", "--num-samples", "4", "--epochs", "3",
            "--max-concurrent", "2", "--grace-period", "3", "--name", "k", "--storage", "results",
            "--quiet", "--confirm-top", "2", "--confirm-seeds", "2"]
    resume = ["--resume", "k", "--storage", "results", "--quiet"]
    for marker, command in (("killed-search-5", args), ("killed-confirm-2", resume)):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), points, *command],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=600)
        finally:
            # The Ray processes the killed driver started, as a killed machine would lose them.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == -9 and (tmp_path / marker).exists(), output[-3000:]
    again = subprocess.run([sys.executable, str(script), str(tmp_path), points, *resume],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    everyone = client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id])
    runs = [r for r in everyone if r.data.tags.get("sslsearch.role") == "trial"]
    confirm = [r for r in runs if r.data.tags["sslsearch.stage"] == "confirm"]
    assert len(runs) - len(confirm) == 4
    assert all(c.info.status == "FINISHED" and c.data.tags["trial_status"] == "completed"
               for c in runs)
    # Each candidate (the top 2, and the defaults unless one of them is) on each fresh seed, once.
    pairs = [(r.data.tags["sslsearch.candidate"], r.data.tags["sslsearch.seed"]) for r in confirm]
    candidates = {c for c, _ in pairs}
    assert len(pairs) == len(set(pairs)) == 2 * len(candidates), pairs
    assert {"1", "2"} <= candidates <= {"1", "2", "defaults"}
    assert {seed for _, seed in pairs} == {"1", "2"}
    # The answer: the winner's line in the summary is the trial the sweep's run names.
    parent = next(r for r in everyone if r.data.tags.get("sslsearch.role") == "parent")
    best = parent.data.tags["sslsearch.best_trial_id"]
    summary = (tmp_path / "results" / "k" / "summary.md").read_text()
    assert "- winner #" in summary and f"({best}" in summary.split("- winner #", 1)[1][:40]
    doc = yaml.safe_load((tmp_path / "results" / "k" / "best_experiment.yaml").read_text())
    assert "confirmed winner #" in doc["description"] and best in doc["description"]
    assert doc["trial"]["seed"] in (1, 2)  # the seed of the run whose encoder is exported


def _best(folder: Path) -> tuple[dict[str, Any], str]:
    """The sweep's best trial: its exported trial config without the run-specific fields, and
    its summary line (the val kNN and probe figures)."""
    import yaml

    doc = yaml.safe_load((folder / "best_experiment.yaml").read_text())
    trial = {k: v for k, v in doc["trial"].items() if k not in ("data_dir",)}
    return trial, doc["description"].split(": ", 1)[1].split(". Re-run")[0]


@pytest.mark.slow
def test_chaos_five_sigkills_at_seeded_random_moments_resume_to_the_calm_result(
        tmp_path: Path) -> None:
    """The driver SIGKILLed 5 times (with the Ray processes it started) at moments drawn from
    random.Random(19), resumed after each: every trial finished exactly once, one MLflow child per
    trial, no epoch logged twice, none RUNNING, and the same best trial and figures as an
    uninterrupted sweep with the same seed (CPU training is deterministic). About 3 minutes."""
    import contextlib
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from sslsearch.search.sweep import has_tune_state

    args = ["--space", "simclr", "--experiment", "quick", "--num-samples", "4", "--epochs", "3",
            "--max-concurrent", "1", "--grace-period", "3", "--storage", "results", "--quiet",
            "--seed", "3", "--no-confirm"]
    calm = sslsearch_run([*args, "--name", "calm", "--tracking-uri", "calm.db"], tmp_path,
                         timeout=600)
    assert calm.returncode == 0, calm.stdout[-3000:] + calm.stderr[-3000:]

    rng = random.Random(19)
    kills, mid_sweep, command = 0, 0, [*args, "--name", "chaos", "--tracking-uri", "chaos.db"]
    while kills < 5:
        proc = subprocess.Popen([sys.executable, "-m", "sslsearch.run", *command], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        delay = rng.uniform(4.0, 16.0)  # from Ray's start-up to mid-trial
        deadline = time.time() + delay
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:  # it finished before this kill: nothing left to interrupt
            break
        mid_sweep += has_tune_state(tmp_path / "results" / "chaos")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        # Until the sweep's state exists on disk, a kill leaves nothing to resume: start anew.
        if (tmp_path / "results" / "chaos" / "tuner.pkl").is_file():
            command = ["--resume", "chaos", "--storage", "results", "--quiet"]
    # Kills land mid-trial, and on a busy machine some before Tune first saves its state (then a
    # resume starts over: sweep.has_tune_state; restored, Ray ran 1 trial of 4, seen 2026-12-03).
    assert kills == 5 and mid_sweep > 0, mid_sweep
    done = sslsearch_run(command, tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    uri = f"sqlite:///{tmp_path / 'chaos.db'}"
    children = assert_complete_sweep(uri, n_trials=4, epochs=3)
    assert all(c.info.status == "FINISHED" for c in children)
    assert _best(tmp_path / "results" / "chaos") == _best(tmp_path / "results" / "calm")


def test_a_sweep_killed_before_tunes_first_save_is_started_over_not_restored(
        tmp_path: Path) -> None:
    """``Tuner.restore`` of a folder with ``tuner.pkl`` but no ``experiment_state-*.json`` runs
    Tune's default of one sample (the chaos test saw 1 trial of 4): the resume must start over."""
    from sslsearch.search.sweep import has_tune_state

    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not has_tune_state(tmp_path)
    (tmp_path / "experiment_state-2026-12-03_08-37-40.json").write_text("{}")
    assert has_tune_state(tmp_path)
