"""``python -m sslsearch.bench search``: equal trial-epoch budgets for the default config, random
search and TPE + ASHA; the budget accounting, the report files, bad input (exit 2, one line)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from sslsearch.bench import budget as bench_budget
from sslsearch.bench import headroom, strategies
from sslsearch.bench import search as bs
from sslsearch.bench import search_report as rep
from sslsearch.config import load_experiment
from sslsearch.results import FINISHED
from sslsearch.search import stopping, sweep
from sslsearch.search.optuna_space import random_points
from sslsearch.search.searchers import n_startup_trials
from sslsearch.search.space import load_space, trial_from_config

# ------------------------------------------------------------------------------------------------
# The budget: pure functions


def test_budget_in_whole_trials_and_the_tpe_cap() -> None:
    assert bench_budget.runs_for_budget(12, 2) == 6 and bench_budget.runs_for_budget(13, 3) == 4
    # ASHA never stops a trial before min(grace, epochs) epochs: the cap outlasts the budget.
    assert bench_budget.tpe_trial_cap(12, 4, grace_period=1, max_concurrent=2) == 14
    assert bench_budget.tpe_trial_cap(12, 2, grace_period=3, max_concurrent=2) == 8
    assert bench_budget.within_one_trial(14, 12, 2) and bench_budget.within_one_trial(10, 12, 2)
    assert not bench_budget.within_one_trial(15, 12, 2)
    assert not bench_budget.within_one_trial(9, 12, 2)


class _Inner:
    """A stand-in for the collapse stopper: stops trial 'bad', never everything."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.seen.append(trial_id)
        return trial_id == "bad"

    def stop_all(self) -> bool:
        return False


def test_budget_stopper_counts_each_trials_epochs_once_and_keeps_the_inner_stopper() -> None:
    inner = _Inner()
    stop = stopping.BudgetStopper(5, inner)
    assert stop("a", {"epoch": 1}) is False and stop("bad", {"epoch": 1}) is True
    assert stop("a", {"epoch": 2}) is False
    stop("a", {"epoch": 2})  # a restarted trial repeats its epoch: counted once
    stop("b", {"val_knn_acc": 0.5})  # a result without an epoch trains nothing
    assert stop.spent == 3 and not stop.stop_all()
    stop("b", {"epoch": 1})
    assert not stop.stop_all()
    stop("a", {"epoch": 3})
    assert stop.spent == 5 and stop.stop_all()
    assert inner.seen == ["a", "bad", "a", "a", "b", "b", "a"]


def _simulate_tpe_asha(budget: int, epochs: int, grace: int, concurrent: int,
                       stop_at_grace: set[int]) -> int:
    """Tune's loop in miniature: ``concurrent`` trials advance one epoch per step, each result
    goes through the stopper, a trial ends at its epochs (or at the grace period, for the
    proposals in ``stop_at_grace``: ASHA), new ones are proposed until ``stop_all``."""
    stop = stopping.BudgetStopper(budget)
    cap = bench_budget.tpe_trial_cap(budget, epochs, grace, concurrent)
    proposed, running = 0, {}
    while not stop.stop_all():
        while len(running) < concurrent and proposed < cap:
            running[f"t{proposed}"] = 0
            proposed += 1
        assert running, "the cap ran out before the budget"
        for trial_id in list(running):
            running[trial_id] += 1
            stop(trial_id, {"epoch": running[trial_id]})
            end = grace if int(trial_id[1:]) in stop_at_grace else epochs
            if running[trial_id] >= end:
                del running[trial_id]
    return stop.spent


@pytest.mark.parametrize("stopped", [set(), {1, 2, 3}, set(range(100))])
def test_the_three_strategies_spend_the_same_budget(stopped: set[int]) -> None:
    """default: budget // epochs whole trials; random and tpe_asha: until the trained epochs
    reach the budget, however many trials stop early (ASHA at its grace period, or a collapse:
    random's trials end only that way)."""
    budget, epochs = 12, 4
    whole = bench_budget.runs_for_budget(budget, epochs) * epochs
    spent = _simulate_tpe_asha(budget, epochs, grace=1, concurrent=2, stop_at_grace=stopped)
    assert bench_budget.within_one_trial(whole, budget, epochs)
    assert bench_budget.within_one_trial(spent, budget, epochs) and abs(spent - whole) <= epochs


def test_best_so_far_counts_only_finished_trials_in_time_order() -> None:
    events = [(3.0, "a", 2, 0.7, True), (1.0, "a", 1, 0.5, False), (2.0, "b", 1, 0.9, False),
              (4.0, "c", 1, 0.6, False), (5.0, "c", 2, 0.8, True)]
    assert bench_budget.best_so_far(events) == [None, None, 0.7, 0.7, 0.8]
    assert rep.mean_curve([[None, 0.5, 0.7], [0.6, 0.6]]) == [None, 0.55, pytest.approx(0.65)]


# ------------------------------------------------------------------------------------------------
# The strategies' configurations


def test_default_config_is_the_experiments_trial_without_searched_parameters() -> None:
    from sslsearch.config import load_experiment

    exp = load_experiment("quick")
    space = load_space("simclr.yaml", exp.trial)
    cfg = trial_from_config(space.fixed("simclr"))
    assert cfg.method == "simclr" and cfg.method_params == {}
    assert (cfg.base_lr, cfg.batch_size, cfg.crop_min_scale) == (
        exp.trial.base_lr, exp.trial.batch_size, exp.trial.crop_min_scale)


def test_random_points_are_seeded_inside_the_space_and_keyed_as_it_draws() -> None:
    space = load_space("simclr.yaml")
    a, b = random_points(space, 3, seed=0), random_points(space, 3, seed=1)
    assert a == random_points(space, 3, seed=0) and a != b and len({str(p) for p in a}) == 3
    assert set(a[0]) == set(space.dists("simclr"))
    lo, hi = space.methods["simclr"]["temperature"].args
    assert all(lo <= p["simclr.temperature"] <= hi for p in a + b)


def test_random_starts_from_the_spaces_initial_points_then_draws() -> None:
    from sslsearch.config import load_experiment

    space = load_space("simclr.yaml", load_experiment("fashion_mnist").trial)
    assert len(space.initial) == 1  # `defaults`: the experiment's configuration
    design = strategies.random_design(space, 4, seed=0)
    assert len(design) == 4 and design[0] == dict(space.initial[0])
    assert list(design[1:]) == random_points(space, 3, seed=0)
    assert strategies.random_design(space, 1, seed=0) == (dict(space.initial[0]),)


def test_a_budgeted_search_sizes_tpes_start_up_from_the_budget(tmp_path: Path) -> None:
    # num_samples is only a cap there (tpe_trial_cap): TPE's random start-up is what
    # `sslsearch.run --num-samples budget/epochs` would use, not a third of the cap.
    from sslsearch.config import load_experiment

    exp = load_experiment("fashion_mnist")
    exp = dataclasses.replace(exp, search=dataclasses.replace(exp.search, num_samples=38))
    space = load_space("simclr.yaml", exp.trial)
    settings = sweep.SweepSettings(name="x", storage=str(tmp_path), tracking_uri="sqlite:///"
                                   f"{tmp_path / 'm.db'}", mlflow_experiment="sslsearch")

    def startup(budget: int | None) -> int:
        tuner = sweep.build_tuner(exp, space, settings, quiet=True, budget_epochs=budget)
        searcher = tuner._local_tuner._tune_config.search_alg
        return int(searcher._sampler._n_startup_trials)

    assert startup(12 * exp.trial.epochs) == n_startup_trials(12, space.n_dims) == 4
    assert startup(None) == n_startup_trials(38, space.n_dims) == 10


def test_the_budget_stop_goes_in_front_of_the_sweeps_own_stopper(tmp_path: Path) -> None:
    """Through the Tuner that sslsearch.search.sweep.build_tuner makes (no Ray started)."""
    from sslsearch.config import load_experiment

    exp = load_experiment("quick")
    settings = sweep.SweepSettings(name="x", storage=str(tmp_path), tracking_uri="sqlite:///"
                                   f"{tmp_path / 'm.db'}", mlflow_experiment="sslsearch")
    tuner = sweep.build_tuner(exp, load_space("simclr.yaml", exp.trial), settings, quiet=True,
                              budget_epochs=7)
    stopper = tuner._local_tuner.get_run_config().stop
    assert isinstance(stopper, stopping.BudgetStopper)
    assert isinstance(stopper.inner, stopping.CollapseStopper) and stopper.budget == 7


def test_random_and_tpe_run_until_the_budget_and_random_stops_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collapsed random trial's unspent epochs go to the next draw: random runs its points up
    to the cap under the same budget stop as TPE (it ran budget // epochs points, and spent 38
    of 48 trial-epochs on VICReg when trials collapsed)."""
    from sslsearch.config import load_experiment

    exp = load_experiment("quick")
    calls: dict[str, Any] = {}

    class Grid(list[Any]):  # a ResultGrid with no trials
        num_terminated = num_errors = 0

    def fake_build_tuner(e: Any, space: Any, settings: Any, quiet: bool = False,
                         budget_epochs: int | None = None) -> Any:
        calls[Path(settings.storage).name] = (e.search, space, budget_epochs)
        (Path(settings.storage) / "b" / "trial" / "checkpoint_000001").mkdir(parents=True)
        return SimpleNamespace(fit=Grid)

    monkeypatch.setattr(sweep, "build_tuner", fake_build_tuner)
    p = SimpleNamespace(exp=exp, space=load_space("simclr.yaml", exp.trial), folder=tmp_path,
                        name="b", tracking_uri="sqlite:///x.db", mlflow_experiment="sslsearch",
                        quiet=True, keep_checkpoints=False)
    b = bench_budget.Budget(3 * exp.trial.epochs, exp.trial.epochs, 3, 9)
    for strategy in ("random", "tpe_asha"):
        strategies.run_strategy(p, strategy, 0, b)
        name = strategies.run_name(strategy, b, 0)
        search, _, budget = calls[name]
        assert budget == b.trial_epochs and search.num_samples == b.tpe_cap
        trial = tmp_path / name / "b" / "trial"
        assert trial.is_dir() and not any(trial.iterdir())  # its checkpoints deleted after fit
    random_search, random_space, _ = calls[strategies.run_name("random", b, 0)]
    assert random_search.grace_period == b.epochs  # ASHA stops no random trial
    assert len(random_space.initial) == b.tpe_cap  # drawn points, not TPE's proposals


# ------------------------------------------------------------------------------------------------
# Summaries and the report, from hand-built Ray results


def _result(trial_id: str, epochs: int, planned: int, vals: list[float], t0: float,
            probe: float | None = None, **config: Any) -> Any:
    metrics: dict[str, Any] = {"trial_id": trial_id}
    if epochs:
        metrics.update(epoch=float(epochs), val_knn_acc=vals[-1], time_total_s=float(epochs))
    if probe is not None:
        metrics.update(probe_val_acc=probe, probe_test_acc=probe - 0.01)
    frame = pd.DataFrame({"epoch": [float(e + 1) for e in range(epochs)],
                          "val_knn_acc": vals[:epochs],
                          "timestamp": [t0 + e for e in range(epochs)]})
    return SimpleNamespace(metrics=metrics, error=None, path=f"/x/{trial_id}", checkpoint=None,
                           config={"_base": {"epochs": planned}, "method": "simclr", **config},
                           metrics_dataframe=frame)


def _plan(tmp_path: Path) -> Any:
    return SimpleNamespace(space=load_space("simclr.yaml"), exp=load_experiment("quick"))


def test_summarize_run_selects_on_validation_and_counts_the_trained_epochs(
        tmp_path: Path) -> None:
    results = [
        _result("a", 2, 2, [0.5, 0.7], t0=0, probe=0.8, base_lr=1e-3),
        _result("b", 1, 2, [0.95], t0=1),  # stopped early: never selected, however high
        _result("c", 2, 2, [0.6, 0.75], t0=3, probe=0.7, base_lr=2e-3),
        _result("d", 0, 2, [], t0=5),  # the budget stop came before its first epoch
    ]
    budget = bench_budget.Budget(6, 2, 3, 8)
    row, records = strategies.summarize_run(_plan(tmp_path), "tpe_asha", 0, budget, results,
                                            wall_s=12.0)
    assert [t.trial_id for t in records] == ["a", "b", "c"]
    assert row["spent"] == 5 and row["within_budget"]
    assert row["budget"]["trials"] == 3 and row["budget"]["stopped_early"] == 1
    assert row["best"]["trial_id"] == "c" and row["best"]["probe_test_acc"] == pytest.approx(0.69)
    assert row["best"]["params"] == {"base_lr": 2e-3}
    assert row["curve"] == [None, 0.7, 0.7, 0.7, 0.75]
    assert [t["status"] for t in row["trials"]] == [FINISHED, "stopped early", FINISHED]


def _runs() -> list[dict[str, Any]]:
    runs = []
    for strategy, base in (("default", 0.70), ("random", 0.72), ("tpe_asha", 0.75)):
        for seed in (0, 1):
            best = {"trial_id": f"{strategy}{seed}", "val_knn_acc": base + 0.01 * seed,
                    "probe_val_acc": 0.8, "probe_test_acc": base + 0.05, "params": {"x": 0.5}}
            runs.append({"strategy": strategy, "search_seed": seed, "wall_s": 10.0,
                         "budget": {"trials": 3, "finished": 3, "stopped_early": 0,
                                    "failed": 0},
                         "spent": 6 if strategy != "tpe_asha" else 7, "within_budget": True,
                         "best": best, "curve": [None, base, base + 0.01 * seed],
                         "budget_trials": 3, "budget_epochs": 6, "trials": [],
                         "confirmed": {"winner": f"{strategy}{seed}", "regret": 0.08 - base + 0.7,
                                       "optimism": 0.01, "stat": {"mean": base - 0.01}}})
    return runs


def _info() -> dict[str, Any]:
    return {"name": "b", "command": "python -m sslsearch.bench search", "space": "simclr.yaml",
            "experiment": "quick.yaml", "method": "simclr", "dataset": "digits",
            "backbone": "small_cnn", "epochs": 2,
            "budgets": [bench_budget.Budget(6, 2, 3, 8).to_json()],
            "search_seeds": [0, 1], "strategies": list(strategies.STRATEGIES),
            "metric": "val_knn_acc", "selection": bs.SELECTION, "wall_seconds": 60.0,
            "fresh_seeds": [7, 8, 9], "confirm_top": 2, "confirmation_runs": 12,
            "defaults": {"stat": {"mean": 0.69, "sd": 0.01, "n": 3, "low": 0.66, "high": 0.71}}}


def test_results_are_written_as_json_markdown_and_png(tmp_path: Path) -> None:
    ref = {"trials": 64, "finished": 60, "best_single_seed": 0.81,
           "candidates": [{"name": "#1 (r1)", "params": {"base_lr": 0.01},
                           "stat": {"mean": 0.78, "sd": 0.01, "n": 3, "low": 0.76,
                                    "high": 0.80}}],
           "best": {"name": "#1 (r1)", "params": {}, "stat": {"mean": 0.78, "sd": 0.01}},
           "defaults": {}, "headroom": {"mean": 0.09, "low": 0.05, "high": 0.13}}
    md, written = rep.write_results(tmp_path, _info(), _runs(), ref)
    assert [p.name for p in written] == [rep.RESULTS_MD, rep.RESULTS_JSON, rep.CURVE_PNG]
    assert (tmp_path / rep.CURVE_PNG).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / rep.RESULTS_MD).read_text() == md
    doc = json.loads((tmp_path / rep.RESULTS_JSON).read_text())
    assert doc["budgets"][0]["trials"] == 3 and len(doc["runs"]) == 6
    assert doc["reference"]["headroom"]["mean"] == 0.09
    tpe = next(s for s in doc["summary"] if s["strategy"] == "tpe_asha")
    assert tpe["best_val_knn_acc"]["mean"] == pytest.approx(0.755)
    assert tpe["best_val_knn_acc"]["n"] == 2 and tpe["spent"] == [7, 7]
    assert tpe["confirmed"]["mean"] == pytest.approx(0.74)
    assert tpe["regret"]["mean"] == pytest.approx(0.03)
    rows = [line for line in md.splitlines() if line.startswith("| 3 | tpe_asha | 75.50 ± 0.71 |")]
    assert rows and "| 74.00 ± 0.00 | +3.00 | 33% |" in rows[0], md
    assert "**Headroom** over the default configuration: +9.00 points" in md
    assert "Default configuration: 69.00 ± 1.00" in md


def _record(tid: str, value: float, seed: int | None = None, **config: Any) -> Any:
    from sslsearch.results import TrialRecord

    return TrialRecord(method="simclr", trial_id=tid, stage="search", params={}, config=config,
                       status=FINISHED, epochs=[1.0], val_knn=[value], seconds=1.0,
                       metrics={"val_knn_acc": value}, seed=seed)


def test_a_configuration_is_confirmed_once_however_many_runs_pick_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference, the default strategy and a search that picked the defaults all read one
    set of confirmation runs; the headroom is the reference's best minus the defaults, and the
    regret the reference's best minus a run's confirmed winner."""
    exp = load_experiment("quick")
    space = load_space("simclr.yaml", exp.trial).only("simclr")
    trained: list[list[dict[str, Any]]] = []
    truth = {0.0005: 0.70, 0.001: 0.80, 0.004: 0.76}  # base_lr → confirmed mean

    def fake_runs_tuner(configs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        trained.append(configs)
        results = [SimpleNamespace(
            metrics={"trial_id": f"r{len(trained)}-{i}", "epoch": 8.0,
                     "val_knn_acc": truth[c.get("base_lr", exp.trial.base_lr)] + c["seed"] / 1e3},
            config={**c, "_base": {**c["_base"], "epochs": 8}}, error=None, checkpoint=None,
            path="") for i, c in enumerate(configs)]
        return SimpleNamespace(fit=lambda: results)

    monkeypatch.setattr(sweep, "build_runs_tuner", fake_runs_tuner)
    monkeypatch.setattr(sweep, "fit_all", lambda tuner: tuner.fit())
    p = SimpleNamespace(exp=exp, space=space, method="simclr", folder=tmp_path, name="b",
                        tracking_uri="sqlite:///x", mlflow_experiment="e", quiet=True,
                        keep_checkpoints=True, confirm_top=2)
    confirmer = headroom.Confirmer(p, [1, 2, 3])
    defaults = confirmer.defaults()  # base_lr 0.001: the experiment's
    assert defaults.stat("val_knn_acc").mean == pytest.approx(0.802)  # type: ignore[union-attr]
    fixed = space.fixed("simclr")
    ref = headroom.reference(confirmer, [_record("r1", 0.9, **{**fixed, "base_lr": 0.004}),
                                         _record("r2", 0.8, **fixed),
                                         _record("r3", 0.7, **{**fixed, "base_lr": 0.0005})],
                             2, defaults)
    assert len(trained) == 2 and len(trained[1]) == 3  # the defaults were not trained again
    assert ref["best"]["stat"]["mean"] == pytest.approx(0.802)  # the defaults are the best
    assert ref["headroom"]["mean"] == pytest.approx(0.0)
    conf = headroom.confirm_run(confirmer, "tpe_asha",
                                [_record("t1", 0.95, **{**fixed, "base_lr": 0.004}),
                                 _record("t2", 0.85, **{**fixed, "base_lr": 0.0005})], "t")
    assert len(trained) == 3 and {c["base_lr"] for c in trained[2]} == {0.0005}  # only t2's
    row = headroom.confirmed_row(conf, ref["best"]["stat"]["mean"])
    assert row["winner"] == "t1" and row["regret"] == pytest.approx(0.802 - 0.762)
    assert row["optimism"] == pytest.approx(0.95 - 0.762)  # #1's search value − its mean
    default = headroom.confirm_run(confirmer, "default", [_record("d0", 0.83, seed=0, **fixed)],
                                   "d")
    assert len(trained) == 3 and default.winner is not None  # the defaults: known
    assert headroom.confirmed_row(default, 0.802)["regret"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line naming the file or field, before anything starts


@pytest.mark.parametrize(("args", "named"), [
    (["--space", "nope.yaml"], "space file 'nope.yaml' not found"),
    (["--space", "simclr", "--experiment", "nope"], "experiment file 'nope' not found"),
    (["--space", "simclr", "--budget", "x"], "argument --budget: expected a whole number"),
    (["--space", "simclr", "--search-seeds", "0"], "argument --search-seeds"),
    (["--space", "simclr", "--epochs", "4", "--budget", "3"], "--budget 3: less than one trial"),
    (["--space", "simclr", "--budget", "8", "--budget-trials", "2"], "not allowed with"),
    (["--space", "simclr", "--budget", "8", "--epochs", "2", "--seeds", "2"], "--seeds 2"),
    (["--space", "simclr", "--budget-trials", "2,4", "--seeds", "2"], "--seeds 2: one budget"),
    (["--space", "simclr", "--budget-trials", "2,x"], "argument --budget-trials"),
    (["--space", "simclr", "--reference-trials", "-1"], "argument --reference-trials"),
    (["--space", "all_methods"], "--method: all_methods.yaml draws"),
    (["--space", "simclr", "--method", "byol"], "--method 'byol': not drawn by simclr.yaml"),
    (["--space", "simclr", "--strategies", "default,grid"], "--strategies 'default,grid'"),
    (["--space", "simclr", "--name", "../out"], "--name '../out'"),
    (["--space", "simclr", "--name", "/tmp/out"], "--name '/tmp/out'"),
    (["--space", "simclr", "--name", ".."], "--name '..'"),
    (["--space", "simclr", "--storage", "s3://bucket/x"], "--storage s3://bucket/x"),
    (["--space", "simclr", "--tracking-uri", "ftp://x"], "--tracking-uri 'ftp://x'"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], named: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert bs.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no mlflow.db


def test_an_existing_benchmark_folder_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sslsearch_results" / "b1").mkdir(parents=True)
    assert bs.main(["--space", "simclr", "--name", "b1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_bench_command_hands_search_to_the_benchmark(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sslsearch.bench", "search", "--space",
                           str(tmp_path / "missing.yaml")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "missing.yaml' not found" in proc.stderr


# ------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # 60-100 s on the shared 2 cores: 3 Ray experiments (start-up each), ~7 trials
def test_bench_search_end_to_end(tmp_path: Path) -> None:
    """Digits, SimCLR, 2 epochs a trial, a budget of 4 trial-epochs, one search seed, ASHA
    allowed to stop after 1 epoch: the three strategies spend the same budget (± one trial),
    the report is written and logged to MLflow, every trial a child of one parent."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "sslsearch.bench", "search", "--space", "simclr",
         "--experiment", "quick", "--epochs", "2", "--budget", "4", "--grace-period", "1",
         "--search-seeds", "1", "--name", "b", "--tracking-uri", uri, "--quiet",
         "--confirm-top", "1", "--confirm-seeds", "1", "--reference-trials", "2",
         "--reference-top", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    folder = tmp_path / "sslsearch_results" / "b"
    doc = json.loads((folder / rep.RESULTS_JSON).read_text())
    spent = {r["strategy"]: r["spent"] for r in doc["runs"]}
    assert spent["default"] == spent["random"] == 4
    assert abs(spent["tpe_asha"] - 4) <= 2, spent
    for r in doc["runs"]:
        assert r["best"] is not None and r["best"]["probe_test_acc"] is not None, r
        assert len(r["curve"]) == r["spent"]
    assert (folder / rep.CURVE_PNG).read_bytes().startswith(b"\x89PNG")
    md = (folder / rep.RESULTS_MD).read_text()
    assert "| 2 | tpe_asha | " in md and "**Headroom** over the default configuration" in md
    assert doc["reference"]["trials"] == 2 and doc["fresh_seeds"] == [3]
    assert all(r["confirmed"]["stat"]["n"] == 1 for r in doc["runs"])

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sslsearch")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sslsearch.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sslsearch.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children)
    stages = {c.data.tags.get("sslsearch.stage") for c in children}
    assert stages == {f"{s} budget 2 search-seed 0" for s in strategies.STRATEGIES} | {"confirm"}
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {rep.RESULTS_MD, rep.RESULTS_JSON, rep.CURVE_PNG} <= artifacts
    assert "tpe_asha.2t.best_val_knn_acc.mean" in parents[0].data.metrics
    assert "tpe_asha.2t.confirmed.mean" in parents[0].data.metrics



def test_checkpoints_are_deleted_once_read_and_results_kept(tmp_path: Path) -> None:
    trial = tmp_path / "random-seed0" / "b" / "simclr_1"
    for name in ("checkpoint_000000", "checkpoint_000001"):
        (trial / name).mkdir(parents=True)
        (trial / name / "checkpoint.pt").write_bytes(b"x" * 1000)
    (trial / "result.json").write_text("{}")
    assert rep.drop_checkpoints(tmp_path / "random-seed0") == 2000
    assert sorted(p.name for p in trial.iterdir()) == ["result.json"]
    assert rep.drop_checkpoints(tmp_path / "random-seed0") == 0


def test_the_collapse_stopper_stops_a_shrinking_rank_not_a_growing_one() -> None:
    """Low and shrinking for ``patience`` epochs: collapsed. Low but growing (MoCo v2 in its
    first epochs on 2,000 images: rank/d 0.039 → 0.053 while val kNN rose): left to train."""
    stopper = stopping.CollapseStopper(std_ratio=0.03, rank_ratio=0.06, patience=2)
    shrinking = [{"embed_std_ratio": 0.6, "effective_rank_ratio": r} for r in (0.05, 0.02)]
    growing = [{"embed_std_ratio": 0.6, "effective_rank_ratio": r} for r in (0.039, 0.053)]
    assert [stopper("a", r) for r in shrinking] == [False, True]
    assert shrinking[-1]["failure_reason"] == "collapsed"
    assert [stopper("b", r) for r in growing] == [False, False]
    flat = [{"embed_std_ratio": 0.01, "effective_rank_ratio": 0.5}] * 2  # std alone collapsed
    assert [stopper("c", dict(r)) for r in flat] == [False, True]
