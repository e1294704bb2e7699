"""The search benchmark's strategies (:mod:`sslsearch.bench.search`), each run through the sweep's
own tuners for one budget and one search seed, and what one such run found: its budget, its best
trial by the one selection rule, its best-so-far curve, its trials."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

from sslsearch.bench.budget import Budget, best_so_far, within_one_trial
from sslsearch.bench.search_report import drop_checkpoints
from sslsearch.config import Experiment
from sslsearch.results import FINISHED, TrialRecord
from sslsearch.search.optuna_space import random_points
from sslsearch.search.space import SearchSpace

STRATEGIES = ("default", "random", "tpe_asha")


def random_design(space: SearchSpace, runs: int, seed: int) -> tuple[dict[str, Any], ...]:
    """``random``'s ``runs`` points: the space's own ``initial:`` points first (TPE evaluates them
    first too), then draws of Optuna's ``RandomSampler(seed)``; the two strategies then differ
    only in what proposes the rest."""
    start = tuple(dict(p) for p in space.initial[:runs])
    return start + tuple(random_points(space, runs - len(start), seed))


def _for_seed(p: Any, seed: int) -> tuple[Experiment, SearchSpace]:
    exp = dataclasses.replace(p.exp, trial=dataclasses.replace(p.exp.trial, seed=seed))
    return exp, dataclasses.replace(p.space, base={**p.space.base, "seed": seed})


def run_name(strategy: str, b: Budget, seed: int) -> str:
    """The Ray experiment's folder of one run, and its MLflow stage tag's words."""
    return f"{strategy}-{b.trials}trials-seed{seed}"


def run_strategy(p: Any, strategy: str, seed: int, b: Budget) -> tuple[list[Any], float]:
    """One strategy for one search seed and budget ``b``: its Ray results and wall time."""
    from sslsearch.search import sweep

    exp, space = _for_seed(p, seed)
    name = run_name(strategy, b, seed)
    t0 = time.time()
    if strategy == "default":
        seeds = [seed * b.default_seeds + i for i in range(b.default_seeds)]
        configs = [{**space.fixed(p.method), "seed": s} for s in seeds]
        tuner = sweep.build_runs_tuner(configs, exp, str(p.folder), name, p.name,
                                       p.tracking_uri, p.mlflow_experiment, p.quiet)
    else:
        settings = sweep.SweepSettings(name=p.name, storage=str(p.folder / name),
                                       tracking_uri=p.tracking_uri,
                                       mlflow_experiment=p.mlflow_experiment, seed=seed)
        # Both run until their trials have trained the budget, so the epochs a collapsed trial
        # did not train go to the next one (random once spent 38 of 48 on VICReg).
        search = dataclasses.replace(exp.search, num_samples=b.tpe_cap)
        if strategy == "random":
            space = dataclasses.replace(space, initial=random_design(space, b.tpe_cap, seed))
            # ASHA's grace period = the epochs: it stops nothing; every trial is a drawn point.
            search = dataclasses.replace(search, grace_period=b.epochs)
        tuner = sweep.build_tuner(dataclasses.replace(exp, search=search), space, settings,
                                  quiet=p.quiet, budget_epochs=b.trial_epochs)
    results = sweep.fit_all(tuner)  # Ctrl+C ends the benchmark
    if not p.keep_checkpoints:  # the results are in hand; nothing here reads a checkpoint
        drop_checkpoints(p.folder / name)
    return results, time.time() - t0


def trained_trials(results: Sequence[Any]) -> list[Any]:
    """The results that count: a trial the budget stop ended before its first epoch trained
    nothing and is left out (an errored one is kept: it failed)."""
    from sslsearch.results import epochs_trained

    return [r for r in results
            if epochs_trained(r) > 0 or getattr(r, "error", None) is not None]


def _events(result: Any, record: Any) -> list[tuple[float, str, int, float | None, bool]]:
    """One event per epoch the trial trained: ``(time, trial, epoch, val_knn, finishes it)``;
    the time is the epoch's result timestamp (whole seconds; ties go by trial and epoch)."""
    times: dict[int, float] = {}
    try:
        df = result.metrics_dataframe
    except Exception:  # no progress file
        df = None
    if df is not None and "epoch" in df and "timestamp" in df:
        rows = df[["epoch", "timestamp"]].dropna()
        times = {int(e): float(ts) for e, ts in zip(rows["epoch"], rows["timestamp"],
                                                     strict=True)}
    events = []
    for e, v in zip(record.epochs, record.val_knn, strict=True):
        final = record.status == FINISHED and e == record.epochs[-1]
        events.append((times.get(int(e), math.inf), record.trial_id, int(e),
                       record.val_knn_acc if final else v, final))
    return events


def summarize_run(p: Any, strategy: str, seed: int, b: Budget, results: Sequence[Any],
                  wall_s: float) -> tuple[dict[str, Any], list[TrialRecord]]:
    """One strategy × budget × search seed: budget spent, best trial by the selection rule (at
    the search's seed), curve, trials; and the trials' records."""
    from sslsearch.results import budget as budget_of
    from sslsearch.results import record, select_best
    from sslsearch.search.space import trial_keys

    keys = trial_keys(p.space) + (["seed"] if strategy == "default" else [])
    results = trained_trials(results)
    records = [record(r, strategy, keys) for r in results]
    spent = budget_of(results)
    best = select_best(records, p.exp.search.metric, p.exp.search.mode)
    events = [e for r, t in zip(results, records, strict=True) for e in _events(r, t)]
    return {
        "strategy": strategy, "search_seed": seed, "budget_trials": b.trials,
        "budget_epochs": b.trial_epochs, "wall_s": wall_s,
        "budget": dataclasses.asdict(spent), "spent": spent.trained,
        "within_budget": within_one_trial(spent.trained, b.trial_epochs, b.epochs),
        "best": None if best is None else {
            "trial_id": best.trial_id, "val_knn_acc": best.val_knn_acc,
            "probe_val_acc": best.probe_val_acc,
            "probe_test_acc": best.metrics.get("probe_test_acc"), "params": best.params},
        "curve": best_so_far(events),
        "trials": [{**t.to_json(), "config_seed": t.seed} for t in records],
    }, records
