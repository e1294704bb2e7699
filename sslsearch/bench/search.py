"""Does the search beat defaults? TPE + ASHA against the default config and random search.

A benchmark, not a test::

    python -m sslsearch.bench search --space simclr.yaml --experiment fashion_mnist \
        --budget-trials 8 --search-seeds 3

For one search space (one method: ``--method`` picks it from a space that draws several) and one
experiment, three **strategies** spend the **same budget in trial-epochs** (pretraining epochs
actually trained, summed over trials; ``--budget``, or ``--budget-trials`` × the epochs of a trial):

* ``default``: the method's default configuration (the experiment's trial settings, the space's
  constants, no searched parameter) trained ``budget // epochs`` times with different seeds
  (``--seeds``), through :func:`sslsearch.sweep.build_seed_tuner` (no searcher, no ASHA);
* ``random``: the space's ``initial:`` points (as TPE evaluates them first), then configurations
  drawn up front by Optuna's seeded ``RandomSampler`` from the space, each run to its last epoch
  (ASHA's grace period set to the epochs, so it stops nothing) through
  :func:`sslsearch.sweep.build_tuner` as points to evaluate, until the trained trial-epochs
  reach the budget (a trial that collapses leaves its epochs to the next draw);
* ``tpe_asha``: the product's search as ``python -m sslsearch.run`` runs it
  (:func:`sslsearch.sweep.build_tuner`: seeded TPE, ASHA, the collapse stopper), which keeps
  proposing trials until its trained trial-epochs reach the budget: ASHA's savings buy more
  trials. Trials still running then are stopped (they count as stopped early).

Each strategy is repeated for every search seed (``--search-seeds N``: seeds 0 … N−1; the seed of
the random draws, of TPE and of the searched trials; the default config's seeds are
``seed × runs + i``). Per strategy the report gives, mean ± sample std over the search seeds:
the best validation kNN accuracy among the trials that trained all their epochs (selection on
validation only) and that trial's linear-probe **test** accuracy; and the trial-epochs actually
spent, the trials by outcome and the wall time. All strategies spend the budget ± one trial's
epochs (``default``: ``budget // epochs`` whole trials; ``random`` and ``tpe_asha`` stop at the
first result that reaches the budget, so they can overshoot by the epochs other trials report at
the same time).

Writes ``bench_search.json``, ``bench_search.md`` and ``best_so_far.png`` (the best finished
trial's val kNN against cumulative trial-epochs, per strategy) into ``--storage/--name``, with
each strategy's Ray experiments beside them, and logs them to the benchmark's parent MLflow run,
whose children are every trial (tagged ``sslsearch.stage``: strategy and search seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sslsearch.bench.budget import best_so_far, runs_for_budget, tpe_trial_cap, within_one_trial
from sslsearch.bench.search_report import (
    RESULTS_MD,
    SELECTION,
    aggregate,
    drop_checkpoints,
    pct,
    write_results,
)
from sslsearch.cli import positive_int
from sslsearch.config import SPACES_DIR, Experiment, load_experiment
from sslsearch.errors import ConfigError, exit_code
from sslsearch.results import FINISHED
from sslsearch.schema import resolve_file, results_folder
from sslsearch.space import Dist, SearchSpace, random_points

STRATEGIES = ("default", "random", "tpe_asha")
# ------------------------------------------------------------------------------------------------
# The command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit code 2 (main)
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sslsearch.bench search",
                description="Equal trial-epoch budgets: the default config, random search and "
                            "TPE + ASHA, over several search seeds.")
    p.add_argument("--space", required=True,
                   help="search-space YAML: a path or a name under search_spaces/")
    p.add_argument("--experiment", default="quick",
                   help="experiment YAML: a path or a name under experiments/ "
                        "(default: %(default)s)")
    p.add_argument("--method", help="the method, for a space that draws several "
                                    "(all_methods.yaml)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=positive_int,
                        help="trial-epochs per strategy and search seed (default: "
                             "--budget-trials × epochs)")
    budget.add_argument("--budget-trials", type=positive_int,
                        help="the budget in whole trials: budget = this × epochs (default: the "
                             "experiment's search.num_samples)")
    p.add_argument("--epochs", type=positive_int,
                   help="pretraining epochs per trial (default: the experiment's)")
    p.add_argument("--search-seeds", type=positive_int, default=3,
                   help="repetitions of each strategy (seeds 0 … N−1; default: %(default)s); "
                        "a claim wants ≥ 3")
    p.add_argument("--seeds", type=positive_int,
                   help="runs of the default config per search seed (default: budget // epochs; "
                        "must spend the budget ± one trial)")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated subset of: " + ", ".join(STRATEGIES) + " (default: all)")
    p.add_argument("--max-concurrent", type=positive_int,
                   help="trials at once (default: the experiment's)")
    p.add_argument("--grace-period", type=positive_int,
                   help="tpe_asha: epochs before ASHA may stop a trial (default: the "
                        "experiment's)")
    p.add_argument("--name", help="benchmark name, a folder under --storage "
                                  "(default: bench-search-<space>-<time>-<random>)")
    p.add_argument("--storage", default="sslsearch_results",
                   help="local folder for the results and the Ray experiments "
                        "(default: %(default)s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/"
                                          "mlflow.db)")
    p.add_argument("--mlflow-experiment", default="sslsearch",
                   help="MLflow experiment the benchmark's runs go to (default: %(default)s)")
    p.add_argument("--data-dir", help="dataset folder, overriding the experiment's")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the trials' checkpoints (default: deleted once each strategy's "
                        "results are read; the benchmark never uses them)")
    return p


def validate_name(name: str, storage: Path) -> Path:
    """``storage / name`` (:func:`sslsearch.schema.results_folder`), and a new one."""
    folder = results_folder(name, storage)
    if folder.exists():
        raise ConfigError(f"--name {name!r}: {folder} already exists; choose another name")
    return folder


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything validated before any work starts."""

    exp: Experiment  # overrides applied; trial.seed is set per search seed
    space: SearchSpace  # the method fixed
    space_path: Path
    method: str
    budget: int  # trial-epochs per strategy and search seed
    epochs: int
    runs: int  # budget // epochs: whole trials in the budget (the default's seeds)
    default_seeds: int
    tpe_cap: int
    search_seeds: tuple[int, ...]
    strategies: tuple[str, ...]
    folder: Path
    name: str
    tracking_uri: str
    mlflow_experiment: str
    quiet: bool
    keep_checkpoints: bool = False


def plan(args: argparse.Namespace) -> Plan:
    """Validate the command line and the files; :class:`ConfigError` (one line) on bad input."""
    from sslsearch.cli import Overrides
    from sslsearch.compare import only_method
    from sslsearch.space import load_space

    space_path = resolve_file(args.space, SPACES_DIR, "space")
    overrides = Overrides(max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                          epochs=args.epochs, data_dir=args.data_dir)
    exp = overrides.apply(load_experiment(args.experiment))
    space = load_space(space_path, exp.trial)
    methods = space.method_names
    if args.method is None and len(methods) > 1:
        raise ConfigError(f"--method: {space_path.name} draws {', '.join(methods)}; pick one "
                          "with --method")
    method = args.method or methods[0]
    if method not in methods:
        raise ConfigError(f"--method {method!r}: not drawn by {space_path.name} (it draws: "
                          f"{', '.join(methods)})")
    strategies = tuple(s.strip() for s in str(args.strategies).split(",") if s.strip())
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies or len(set(strategies)) != len(strategies):
        raise ConfigError(f"--strategies {args.strategies!r}: expected distinct names from "
                          f"{', '.join(STRATEGIES)}")
    epochs = exp.trial.epochs
    budget = args.budget if args.budget is not None else (
        (args.budget_trials or exp.search.num_samples) * epochs)
    if budget < epochs:
        raise ConfigError(f"--budget {budget}: less than one trial ({epochs} epochs); give at "
                          f"least {epochs} trial-epochs")
    runs = runs_for_budget(budget, epochs)
    default_seeds = args.seeds if args.seeds is not None else runs
    if not within_one_trial(default_seeds * epochs, budget, epochs):
        raise ConfigError(f"--seeds {default_seeds}: {default_seeds} × {epochs} epochs = "
                          f"{default_seeds * epochs} trial-epochs, not the budget {budget} ± one "
                          f"trial; leave it out (default {runs})")
    storage = Path(args.storage).expanduser()
    if "://" in str(args.storage):
        raise ConfigError(f"--storage {args.storage}: the benchmark writes to a local folder")
    from sslsearch import sweep

    name = args.name if args.name is not None else sweep.new_sweep_id(
        f"bench-search-{space_path.stem}")
    folder = validate_name(name, storage.resolve())
    from sslsearch import preflight, tracking

    tracking_uri = tracking.normalize_uri(args.tracking_uri)
    tracking.check_reachable(tracking_uri)
    preflight.check_sweep(exp, space, str(storage.resolve()), name, tracking_uri,  # before Ray
                          skip_hint="trial.skip_bad_images: true in the experiment")
    search = exp.search
    return Plan(exp=exp, space=only_method(space, method), space_path=space_path, method=method,
                budget=budget, epochs=epochs, runs=runs, default_seeds=default_seeds,
                tpe_cap=tpe_trial_cap(budget, epochs, search.grace_period,
                                      search.max_concurrent),
                search_seeds=tuple(range(args.search_seeds)), strategies=strategies,
                folder=folder, name=name, tracking_uri=tracking_uri,
                mlflow_experiment=args.mlflow_experiment, quiet=bool(args.quiet),
                keep_checkpoints=bool(args.keep_checkpoints))


# ------------------------------------------------------------------------------------------------
# Running the strategies (each through the sweep's own tuners)


def default_config(space: SearchSpace) -> dict[str, Any]:
    """The Ray config of the method's default: the experiment's trial settings (``_base``) and
    the space's constants, no searched parameter (:func:`sslsearch.space.trial_from_config`
    rebuilds the trial from it)."""
    method = str(space.method)
    config: dict[str, Any] = {"_base": dict(space.base), "method": method}
    config.update({k: v for k, v in space.trial.items() if not isinstance(v, Dist)})
    config.update({f"{method}.{k}": v for k, v in space.methods.get(method, {}).items()
                   if not isinstance(v, Dist)})
    return config


def random_design(space: SearchSpace, runs: int, seed: int) -> tuple[dict[str, Any], ...]:
    """``random``'s ``runs`` points: the space's own ``initial:`` points first (TPE evaluates them
    first too), then draws of Optuna's ``RandomSampler(seed)``; the two strategies then differ
    only in what proposes the rest."""
    start = tuple(dict(p) for p in space.initial[:runs])
    return start + tuple(random_points(space, runs - len(start), seed))


def _for_seed(p: Plan, seed: int) -> tuple[Experiment, SearchSpace]:
    exp = dataclasses.replace(p.exp, trial=dataclasses.replace(p.exp.trial, seed=seed))
    return exp, dataclasses.replace(p.space, base={**p.space.base, "seed": seed})


def run_strategy(p: Plan, strategy: str, seed: int) -> tuple[list[Any], float]:
    """One strategy for one search seed: its Ray results and its wall time."""
    from sslsearch import sweep

    exp, space = _for_seed(p, seed)
    run_name = f"{strategy}-seed{seed}"
    t0 = time.time()
    if strategy == "default":
        seeds = [seed * p.default_seeds + i for i in range(p.default_seeds)]
        tuner = sweep.build_seed_tuner(default_config(space), seeds, exp, str(p.folder),
                                       run_name, p.name, p.tracking_uri, p.mlflow_experiment,
                                       p.quiet)
    else:
        settings = sweep.SweepSettings(name=p.name, storage=str(p.folder / run_name),
                                       tracking_uri=p.tracking_uri,
                                       mlflow_experiment=p.mlflow_experiment, seed=seed)
        # Both run until their trials have trained the budget, so the epochs a collapsed trial
        # did not train go to the next one (random once spent 38 of 48 on VICReg).
        search = dataclasses.replace(exp.search, num_samples=p.tpe_cap)
        if strategy == "random":
            space = dataclasses.replace(space, initial=random_design(space, p.tpe_cap, seed))
            # ASHA's grace period = the epochs: it stops nothing; every trial is a drawn point.
            search = dataclasses.replace(search, grace_period=p.epochs)
        tuner = sweep.build_tuner(dataclasses.replace(exp, search=search), space, settings,
                                  quiet=p.quiet, budget_epochs=p.budget)
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(grid):  # Ray returns on Ctrl+C
        raise KeyboardInterrupt
    if not p.keep_checkpoints:  # the results are in hand; nothing here reads a checkpoint
        drop_checkpoints(p.folder / run_name)
    return [grid[i] for i in range(len(grid))], time.time() - t0


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


def summarize_run(p: Plan, strategy: str, seed: int, results: Sequence[Any],
                  wall_s: float) -> dict[str, Any]:
    """One strategy × search seed: budget, best trial (on validation), curve, trials."""
    from sslsearch.compare import trial_keys
    from sslsearch.results import budget as budget_of
    from sslsearch.results import record

    keys = trial_keys(p.space) + (["seed"] if strategy == "default" else [])
    results = trained_trials(results)
    records = [record(r, strategy, keys) for r in results]
    b = budget_of(results)
    finished = [t for t in records if t.status == FINISHED and t.val_knn_acc is not None]
    best = max(finished, key=lambda t: (t.val_knn_acc or 0.0, t.probe_val_acc or 0.0),
               default=None)
    events = [e for r, t in zip(results, records, strict=True) for e in _events(r, t)]
    return {
        "strategy": strategy, "search_seed": seed, "wall_s": wall_s,
        "budget": dataclasses.asdict(b), "spent": b.trained,
        "within_budget": within_one_trial(b.trained, p.budget, p.epochs),
        "best": None if best is None else {
            "trial_id": best.trial_id, "val_knn_acc": best.val_knn_acc,
            "probe_val_acc": best.probe_val_acc,
            "probe_test_acc": best.metrics.get("probe_test_acc"), "params": best.params},
        "curve": best_so_far(events),
        "trials": [{**t.to_json(), "config_seed": t.seed} for t in records],
    }


# ------------------------------------------------------------------------------------------------
# The command


def command_line(argv: Sequence[str]) -> str:
    return " ".join([Path(sys.executable).name, "-m", "sslsearch.bench", "search",
                     *(shlex.quote(a) for a in argv)])


def run(p: Plan, argv: Sequence[str]) -> int:
    from sslsearch import sweep

    command = command_line(argv)
    _log_start(p, command)
    p.folder.mkdir(parents=True)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    t0 = time.time()
    sweep.init_ray(None)
    sweep.check_resources(p.exp.search, None)
    runs: list[dict[str, Any]] = []
    last_results: dict[str, dict[str, Any]] = {}
    stages: dict[str, str] = {}
    for seed in p.search_seeds:
        for strategy in p.strategies:
            print(f"\n== {strategy}, search seed {seed}", flush=True)
            results, wall = run_strategy(p, strategy, seed)
            row = summarize_run(p, strategy, seed, results, wall)
            runs.append(row)
            for r in results:
                if r.metrics and "trial_id" in r.metrics:
                    last_results[str(r.metrics["trial_id"])] = r.metrics
                    stages[str(r.metrics["trial_id"])] = f"{strategy} search-seed {seed}"
            best = row["best"]
            print(f"== {strategy}, search seed {seed}: {row['spent']} trial-epochs, "
                  f"{wall:.0f} s, best val kNN {pct(best and best['val_knn_acc'])}", flush=True)
    elapsed = time.time() - t0
    info = {"name": p.name, "command": command, "space": p.space_path.name,
            "experiment": Path(p.exp.source).name, "method": p.method,
            "dataset": p.exp.trial.dataset, "backbone": p.exp.trial.backbone,
            "epochs": p.epochs, "budget": p.budget, "budget_trials": p.runs,
            "default_seeds": p.default_seeds, "tpe_cap": p.tpe_cap,
            "search_seeds": list(p.search_seeds), "strategies": list(p.strategies),
            "metric": p.exp.search.metric, "selection": SELECTION, "wall_seconds": elapsed}
    md, written = write_results(p.folder, info, runs)
    summary = aggregate(runs, p.strategies)
    link = _log_end(p, summary, written, stages, last_results)
    print(f"\n{md}")
    print(f"report: {p.folder / RESULTS_MD}\nMLflow runs: mlflow ui --backend-store-uri "
          f"{p.tracking_uri} --host 127.0.0.1 --port 5000, then open {link}")
    off = [s for s, v in summary.items() if not v["within_budget"]]
    if off:
        print(f"warning: {', '.join(off)} spent more or less than the budget ± one trial "
              "(failed trials?); see the per-seed table", file=sys.stderr)
    return 0


def _log_start(p: Plan, command: str) -> None:
    from sslsearch import tracking

    tracker = tracking.Tracker(p.tracking_uri, p.mlflow_experiment, p.name)
    tracker.log_sweep(
        params={"space": p.space_path.name, "experiment": Path(p.exp.source).name,
                "method": p.method, "epochs": p.epochs, "budget_trial_epochs": p.budget,
                "runs_per_strategy": p.runs, "default_seeds": p.default_seeds,
                "tpe_trial_cap": p.tpe_cap, "search_seeds": ",".join(map(str, p.search_seeds)),
                "strategies": ",".join(p.strategies), "metric": p.exp.search.metric},
        tags={**tracking.sweep_tags(), "command": command, "sslsearch.kind": "bench_search"},
        texts={"space.yaml": p.space_path.read_text(),
               "experiment.yaml": Path(p.exp.source).read_text(), "command.txt": command + "\n"})
    print(f"bench search {p.name}: {p.method} ({p.space_path.name}), experiment "
          f"{Path(p.exp.source).name}; {p.budget} trial-epochs per strategy "
          f"({', '.join(p.strategies)}) × {len(p.search_seeds)} search seeds\n"
          f"  results: {p.folder}\n  MLflow:  {p.tracking_uri}", flush=True)


def _log_end(p: Plan, summary: dict[str, Any], written: Sequence[Path], stages: dict[str, str],
             last_results: dict[str, dict[str, Any]]) -> str:
    """Stages, baselines, the strategies' means and the report files on the parent run; returns
    the MLflow link to the runs."""
    from sslsearch import tracking

    tracker = tracking.Tracker(p.tracking_uri, p.mlflow_experiment, p.name)  # fresh after fits
    for trial_id, stage in stages.items():
        tracker.client.set_tag(tracker.child(trial_id, "", {}), "sslsearch.stage", stage)
    for metrics in last_results.values():
        tracker.log_parent_baselines(metrics)
    for strategy, s in summary.items():
        for key, stat in itertools.product(("best_val_knn_acc", "best_probe_test_acc"),
                                           ("mean", "std")):
            if s[key][stat] is not None:
                tracker.client.log_metric(tracker.parent_id, f"{strategy}.{key}.{stat}",
                                          s[key][stat])
    for path in written:
        tracker.log_parent_file(path)
    tracker.end_sweep(last_results, p.epochs, "FINISHED")
    return str(tracker.runs_link())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sslsearch.bench search …``: exit code 2 and one line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return exit_code(lambda: run(plan(build_parser().parse_args(argv)), argv))


if __name__ == "__main__":
    sys.exit(main())
