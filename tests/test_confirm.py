"""One selection rule, read by every consumer; confirmation on fresh seeds; its statistics; the
selection simulation; the confirmation's command-line checks (issue 29)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml

from sslsearch.config import load_experiment
from sslsearch.reporting import confirm_report
from sslsearch.results import (
    FINISHED,
    STOPPED_EARLY,
    TrialRecord,
    eligible,
    rank_trials,
    record,
    select_best,
)
from sslsearch.search import confirm
from sslsearch.search.confirm import (
    Candidate,
    Confirmation,
    choose,
    fresh_seeds,
    paired,
    stat,
    t975,
)

METRIC = "val_knn_acc"


def _t(tid: str, knn: float | None, status: str = FINISHED, probe: float | None = None,
       seed: int | None = None, **config: Any) -> TrialRecord:
    metrics: dict[str, Any] = {} if knn is None else {METRIC: knn, "train_loss": 1.0 - knn}
    if probe is not None:
        metrics["probe_val_acc"] = probe
    return TrialRecord(method="simclr", trial_id=tid, stage="search", params={},
                       config={"method": "simclr", **config}, status=status, epochs=[1.0],
                       val_knn=[knn or 0.0], seconds=1.0, metrics=metrics, seed=seed)


# ------------------------------------------------------------------------------------------------
# The rule


def test_the_rule_ranks_finished_trials_by_the_search_metric_and_breaks_ties_on_the_probe() -> None:
    trials = [_t("low", 0.70, probe=0.99), _t("high", 0.80, probe=0.60),
              _t("tie-a", 0.75, probe=0.70), _t("tie-b", 0.75, probe=0.80),
              _t("asha", 0.95, status=STOPPED_EARLY), _t("nan", 0.99, status="failed: nan_loss"),
              _t("err", 0.99, status="error"), _t("nothing", None)]
    order = [t.trial_id for t in rank_trials(trials, METRIC, "max")]
    assert order[:5] == ["high", "tie-b", "tie-a", "low", "asha"]  # finished, then stopped early
    assert set(order[5:]) == {"nan", "err", "nothing"}  # failed or without a value: last
    assert [t.trial_id for t in eligible(trials, METRIC, "max")] == ["high", "tie-b", "tie-a",
                                                                     "low"]
    # Only trials stopped early (and failed ones): the stopped ones are eligible.
    assert [t.trial_id for t in eligible(trials[4:], METRIC, "max")] == ["asha"]
    assert select_best(trials[5:], METRIC, "max") is None
    # A metric minimised (train_loss): the smallest first.
    best = select_best(trials[:4], "train_loss", "min")
    assert best is not None and best.trial_id == "high"


def _ray(trial_id: str, knn: float, probe: float, epoch: float = 3.0) -> Any:
    """A stand-in for a Ray ``Result`` of a 3-epoch search trial."""
    metrics = {"trial_id": trial_id, "epoch": epoch, METRIC: knn, "time_total_s": 1.0,
               "raw_knn_acc": 0.7}
    if epoch == 3.0:
        metrics |= {"probe_val_acc": probe, "probe_test_acc": probe}
    return SimpleNamespace(
        metrics=metrics, error=None, path=f"/x/{trial_id}", checkpoint=None,
        config={"_base": {"epochs": 3}, "method": "simclr", "base_lr": 0.001,
                "simclr.temperature": 0.2},
        metrics_dataframe=pd.DataFrame({"epoch": [1.0, 2.0, epoch], METRIC: [0.5, 0.6, knn]}))


# The old rules disagreed on this set: the summary and --compare took the best probe ("probe"),
# the bench the best val kNN ("knn"), the export the first finished row of the summary.
RESULTS = [_ray("probe", 0.78, 0.90), _ray("knn", 0.82, 0.80), _ray("asha", 0.95, 0.0, epoch=1.0)]


def test_every_consumer_names_the_same_winner(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from sslsearch import run
    from sslsearch.bench import strategies
    from sslsearch.bench.budget import Budget
    from sslsearch.reporting import summary
    from sslsearch.search.space import load_space

    exp = load_experiment("quick")
    records = [record(r, "search") for r in RESULTS]
    assert select_best(records, METRIC, "max").trial_id == "knn"  # type: ignore[union-attr]
    # The summary's order (and its best-per-method table).
    text, rows = summary.summarize(RESULTS, METRIC, "max")
    assert rows[0]["trial_id"] == "knn"
    best_table = text.split("## Best trial per method", 1)[1].split("## All trials")[0]
    assert "| simclr | knn |" in best_table
    # --compare's answer per method, and the sweep's without confirmation: choose().
    chosen = choose(records, METRIC, "max")
    assert chosen is not None and chosen.trial_id == "knn" and chosen.run.trial_id == "knn"
    # The search benchmark's best trial of a strategy run.
    plan = SimpleNamespace(space=load_space("simclr.yaml"), exp=exp)
    row, _ = strategies.summarize_run(plan, "tpe_asha", 0, Budget(9, 3, 3, 5), RESULTS, 1.0)
    assert row["best"]["trial_id"] == "knn"
    # The sweep's report: best_experiment.yaml and the sweep's MLflow run.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "s").mkdir()  # Tune's experiment folder
    p = run.Plan(name="s", storage=str(tmp_path), space_path=Path("simclr.yaml"), exp=exp,
                 tracking_uri=uri, mlflow_experiment="sslsearch", resumed=False)
    assert run._report(p, RESULTS, None, [], 1.0) == 0
    doc = yaml.safe_load((tmp_path / "s" / "best_experiment.yaml").read_text())
    assert "best trial knn by val_knn_acc" in doc["description"]
    assert (tmp_path / "s" / "summary.md").read_text().count("| simclr | knn |") == 2
    client = MlflowClient(tracking_uri=uri)
    parent = client.search_runs([client.get_experiment_by_name("sslsearch").experiment_id])[0]
    assert parent.data.tags["sslsearch.best_trial_id"] == "knn"
    assert parent.data.metrics[f"best.{METRIC}"] == pytest.approx(0.82)


# ------------------------------------------------------------------------------------------------
# Statistics


def test_t_quantiles_match_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (*range(1, 40), 60, 120, 1000):
        assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-3), df


def test_mean_sd_interval_and_paired_differences_by_hand() -> None:
    s = stat([0.80, 0.82, 0.84])
    assert s is not None and s.mean == pytest.approx(0.82) and s.sd == pytest.approx(0.02)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert (s.low, s.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert s.excludes_zero and stat([0.5]) == confirm.Stat(0.5, 0.0, 1, None, None)
    # Seed by seed over the seeds both have: (+0.02, +0.01, +0.03), seed 9 left out.
    d = paired({1: 0.82, 2: 0.81, 3: 0.85, 9: 0.5}, {1: 0.80, 2: 0.80, 3: 0.82})
    assert d is not None and d.n == 3 and d.mean == pytest.approx(0.02)
    assert d.sd == pytest.approx(0.01) and d.low == pytest.approx(0.02 - 4.303 * 0.01 / 3**0.5)
    assert not d.excludes_zero  # +2 ± 1 points over 3 seeds: t(2) = 4.3 keeps 0 inside
    steady = paired({1: 0.82, 2: 0.81, 3: 0.85}, {1: 0.80, 2: 0.795, 3: 0.83})
    assert steady is not None and steady.excludes_zero
    assert fresh_seeds({0}, 3) == [1, 2, 3] and fresh_seeds({4, 0, 2}, 2) == [5, 6]


# ------------------------------------------------------------------------------------------------
# Confirmation


def _runs(label: str, values: dict[int, float]) -> list[TrialRecord]:
    return [_t(f"{label}-{seed}", v, seed=seed, _candidate=label) for seed, v in values.items()]


def _confirmation(defaults_twin: bool = False) -> Confirmation:
    """The search's #1 (0.85 at its seed) confirms at 0.80; #2 (0.83) confirms at 0.82; the
    defaults at 0.79."""
    search = [_t("a", 0.85, base_lr=1.0), _t("b", 0.83, base_lr=2.0), _t("c", 0.70, base_lr=3.0)]
    cands = [Candidate("1", {"base_lr": 1.0}, search[0], also_defaults=defaults_twin),
             Candidate("2", {"base_lr": 2.0}, search[1])]
    if not defaults_twin:
        cands.append(Candidate(confirm.DEFAULTS, {"base_lr": 0.5}))
    confirm.attach(cands, [*_runs("1", {1: 0.79, 2: 0.80, 3: 0.81}),
                           *_runs("2", {1: 0.815, 2: 0.825, 3: 0.82}),
                           *_runs(confirm.DEFAULTS, {1: 0.78, 2: 0.79, 3: 0.80})])
    return Confirmation(METRIC, "max", [1, 2, 3], 2, cands)


def test_the_winner_is_the_best_confirmed_mean_not_the_best_search_value() -> None:
    conf = _confirmation()
    win = conf.winner
    assert win is not None and win.label == "2" and conf.runner_up is not None
    assert [c.label for c in conf.ranked()] == ["2", "1", confirm.DEFAULTS]
    assert conf.optimism == pytest.approx(0.85 - 0.80)  # #1's search value − its mean
    vs_runner_up = conf.versus(conf.runner_up)
    assert vs_runner_up is not None and vs_runner_up.mean == pytest.approx(0.02)
    vs_defaults = conf.versus(conf.defaults)
    assert vs_defaults is not None and vs_defaults.mean == pytest.approx(0.03)
    run = conf.export_run()  # the run nearest the mean 0.82: seed 3
    assert run is not None and run.seed == 3
    choice = choose([], METRIC, "max", conf)
    assert choice is not None and choice.trial_id == "b" and choice.run is run
    assert choice.config == {"method": "simclr"} and choice.value == pytest.approx(0.82)
    tags, metrics = confirm.parent_record(choice, conf, METRIC)
    assert tags["sslsearch.best_trial_id"] == "b" and tags["sslsearch.best_run_trial_id"] == "2-3"
    assert metrics["confirm.optimism"] == pytest.approx(0.05)
    assert metrics["confirm.vs_defaults"] == pytest.approx(0.03)
    text = confirm_report.markdown(conf, search_seed=0)
    lines = [line for line in text.splitlines() if line.startswith("| ") and "rank" not in line]
    assert [line.split("|")[2].strip() for line in lines] == ["**#2 (b), winner**", "#1 (a)",
                                                              "defaults"]
    assert "optimism of the search" in text and "+5.00 points" in text
    assert "winner − the experiment's own configuration: +3.00 points" in text
    assert "distinguishable from zero" in text


def test_differences_inside_the_noise_are_said_to_be_so() -> None:
    conf = _confirmation()
    conf.candidates[2].runs = _runs(confirm.DEFAULTS, {1: 0.83, 2: 0.80, 3: 0.84})
    said = "\n".join(confirm_report.sentences(conf))
    assert "winner − the experiment's own configuration: −0.33 points" in said
    assert "not distinguishable from zero" in said
    # The defaults clearly better: said in so many words.
    conf.candidates[2].runs = _runs(confirm.DEFAULTS, {1: 0.90, 2: 0.91, 3: 0.90})
    assert "did better on the fresh seeds" in "\n".join(confirm_report.sentences(conf))


def test_a_candidate_that_is_the_defaults_is_not_run_twice() -> None:
    from sslsearch.search.space import load_space

    exp = load_experiment("quick")
    space = load_space("simclr.yaml", exp.trial)
    defaults = space.fixed("simclr")
    first = _t("d", 0.9, **{**defaults, **space.initial[0]})  # the `initial: defaults` point
    other = _t("o", 0.8, **{**defaults, "base_lr": 0.01})
    cands = confirm.plan([first, other], METRIC, "max", 2, defaults)
    assert [(c.label, c.also_defaults) for c in cands] == [("1", True), ("2", False)]
    configs = confirm.run_configs(cands, [1, 2])
    assert [(c["_candidate"], c["seed"]) for c in configs] == [("1", 1), ("2", 1), ("1", 2),
                                                                 ("2", 2)]
    # Not among the top K: the defaults run beside them.
    below = _t("d", 0.7, **{**defaults, **space.initial[0]})
    cands = confirm.plan([other, below], METRIC, "max", 1, defaults)
    assert [c.label for c in cands] == ["1", confirm.DEFAULTS]
    # Fewer eligible trials than K: those, and the text says so.
    cands = confirm.plan([other, _t("x", 0.9, status="failed: nan_loss")], METRIC, "max", 3, None)
    assert [c.label for c in cands] == ["1"]
    conf = Confirmation(METRIC, "max", [1], 3, cands)
    assert "only 1 trial(s) were eligible" in confirm_report.sentences(conf)[0]


def test_summary_lists_the_confirmed_candidates_first() -> None:
    from sslsearch.reporting.summary import summarize

    conf = _confirmation()
    text, _ = summarize(RESULTS, METRIC, "max", conf)
    assert text.index("## Confirmed on fresh seeds 1, 2, 3") < text.index("## Best trial per")


def test_the_config_list_proposes_each_config_once_across_a_resume(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from sslsearch.search.searchers import ConfigList

    configs = [{"method": "simclr", "seed": s, "_base": {"epochs": 2}} for s in (1, 2, 3)]
    first = ConfigList(configs, METRIC, "max")
    assert first.suggest("a") == configs[0] and first.suggest("b") == configs[1]
    first.save(str(tmp_path / "state"))
    assert json.loads((tmp_path / "state").read_text())["position"] == 2
    again = ConfigList(configs, METRIC, "max")
    again.restore(str(tmp_path / "state"))
    assert again.suggest("c") == configs[2] and again.suggest("d") == Searcher.FINISHED


# ------------------------------------------------------------------------------------------------
# The simulation


def test_confirmation_picks_the_true_best_more_often_than_one_seed() -> None:
    from sslsearch.bench.selection import Setting, simulate

    r = simulate(Setting(configs=12, spread=3.0, seed_sd=0.6, top=2, seeds=3, repeats=600,
                         seed=7))
    assert r["confirmed_hit"] > r["one_seed_hit"] + 0.04, r
    assert r["confirmed_regret"] < r["one_seed_regret"]
    # One seed promises about the seed spread too much; the confirmed mean far less.
    assert r["one_seed_optimism"] > 0.4 and abs(r["confirmed_optimism"]) < 0.25, r
    assert r["search_optimism"] == pytest.approx(r["one_seed_optimism"], abs=0.15)


# ------------------------------------------------------------------------------------------------
# Bad input: exit 2 and one line, before any trial


def _exit_code(argv: list[str]) -> int:
    from sslsearch.run import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors: one line, exit 2 (sslsearch.cli)
        return int(exc.code or 0)


@pytest.mark.parametrize(("args", "named"), [
    (["--confirm-top", "0"], "--confirm-top"),
    (["--confirm-seeds", "0"], "--confirm-seeds"),
    (["--confirm-top", "4", "--num-samples", "3"], "--confirm-top"),
])
def test_bad_confirmation_flags_exit_2_with_one_line(args: list[str], named: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--space", "simclr", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "Traceback" not in err, err


@pytest.mark.parametrize(("flags", "named"), [
    (["--confirm-top", "3"], "--confirm-top 3"), (["--confirm-seeds", "5"], "--confirm-seeds 5"),
    (["--no-confirm"], "--no-confirm")])
def test_resume_with_other_confirmation_flags_is_refused(
        tmp_path: Path, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.run import main
    from sslsearch.search.space import load_space
    from sslsearch.search.sweep import space_digest, write_sweep_file

    space = load_space("simclr").source
    folder = tmp_path / "results" / "old"
    write_sweep_file(folder, {
        "space_path": space, "space_digest": space_digest(Path(space).read_text()),
        "experiment_path": str(load_experiment("quick").source), "tracking_uri": "sqlite:///x",
        "mlflow_experiment": "sslsearch", "metric": METRIC, "mode": "max",
        "overrides": {"num_samples": 4}, "cpus_per_trial": 1, "gpus_per_trial": 0})
    (folder / "tuner.pkl").write_bytes(b"never unpickled: refused first")
    assert main(["--resume", "old", "--storage", str(tmp_path / "results"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {named}: sweep old was "), err
    # The values it was started with (here: no flags, so K = 2, N = 3) resume it.
    from sslsearch.cli import build_parser
    from sslsearch.run import _resumed_plan

    plan = _resumed_plan(build_parser().parse_args([
        "--resume", "old", "--storage", str(tmp_path / "results"), "--confirm-top", "2",
        "--confirm-seeds", "3"]))
    assert (plan.exp.search.top_k, plan.exp.search.confirm_seeds) == (2, 3)
