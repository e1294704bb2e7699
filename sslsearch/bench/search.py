"""Does the search beat defaults? TPE + ASHA against the default config and random search.

A benchmark, not a test::

    python -m sslsearch.bench search --space simclr.yaml --experiment fashion_mnist \
        --budget-trials 8 --search-seeds 3

For one search space (one method: ``--method`` picks it from a space that draws several) and one
experiment, three **strategies** spend the **same budget in trial-epochs** (pretraining epochs
actually trained, summed over trials; ``--budget``, or ``--budget-trials`` × the epochs of a trial):

* ``default``: the method's default configuration (the experiment's trial settings, the space's
  constants, no searched parameter) trained ``budget // epochs`` times with different seeds
  (``--seeds``), through :func:`sslsearch.search.sweep.build_runs_tuner` (no searcher, no ASHA);
* ``random``: the space's ``initial:`` points (as TPE evaluates them first), then configurations
  drawn up front by Optuna's seeded ``RandomSampler`` from the space, each run to its last epoch
  (ASHA's grace period set to the epochs, so it stops nothing) through
  :func:`sslsearch.search.sweep.build_tuner` as points to evaluate, until the trained trial-epochs
  reach the budget (a trial that collapses leaves its epochs to the next draw);
* ``tpe_asha``: the product's search as ``python -m sslsearch.run`` runs it
  (:func:`sslsearch.search.sweep.build_tuner`: seeded TPE, ASHA, the collapse stopper), which keeps
  proposing trials until its trained trial-epochs reach the budget: ASHA's savings buy more
  trials. Trials still running then are stopped (they count as stopped early).

Each strategy is repeated for every search seed (``--search-seeds N``: seeds 0 … N−1; the seed of
the random draws, of TPE and of the searched trials; the default config's seeds are
``seed × runs + i``) and every budget (``--budget-trials 8,16,32``). All strategies spend the
budget ± one trial's epochs (``default``: ``budget // epochs`` whole trials; ``random`` and
``tpe_asha`` stop at the first result that reaches the budget, so they can overshoot by the epochs
other trials report at the same time).

Each run's answer is **confirmed on fresh seeds** as a sweep confirms its own (its top
``--confirm-top`` on ``--confirm-seeds`` seeds no run used, the same for every run, so answers are
paired; :mod:`sslsearch.bench.headroom`), and with ``--reference-trials R`` a large random search
(its top ``--reference-top`` confirmed) says how much there was to find: the **headroom** (its
best confirmed mean − the default configuration's) and each strategy's **regret** (that best −
the strategy's confirmed winner), also as a fraction of the headroom.

Per strategy and budget the report gives, mean ± sample std over the search seeds: the best
validation kNN accuracy at the search's seed (the one selection rule), the confirmed winner's
mean, the regret, the search's optimism, the trial-epochs actually spent, the trials by outcome
and the wall time.

Writes ``bench_search.json``, ``bench_search.md`` and ``best_so_far.png`` (the best finished
trial's val kNN against cumulative trial-epochs, per strategy) into ``--storage/--name``, with
each run's Ray experiments beside them, and logs them to the benchmark's parent MLflow run, whose
children are every trial and confirmation run (tagged ``sslsearch.stage``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslsearch import console
from sslsearch.bench.budget import Budget, runs_for_budget, tpe_trial_cap, within_one_trial
from sslsearch.bench.headroom import Confirmer, confirm_run, confirmed_row, reference
from sslsearch.bench.search_cli import build_parser
from sslsearch.bench.search_report import RESULTS_MD, aggregate, pct, write_results
from sslsearch.bench.strategies import STRATEGIES, run_name, run_strategy, summarize_run
from sslsearch.config import SPACES_DIR, Experiment, load_experiment
from sslsearch.errors import ConfigError, exit_code
from sslsearch.paths import results_folder
from sslsearch.reporting import provenance
from sslsearch.results import SELECTION
from sslsearch.schema import resolve_file
from sslsearch.search.confirm import Candidate, fresh_seeds
from sslsearch.search.space import SearchSpace
from sslsearch.search.sweepdir import is_remote
from sslsearch.search.tracking_uri import check_reachable, normalize_uri


def validate_name(name: str, storage: Path) -> Path:
    """``storage / name`` (:func:`sslsearch.paths.results_folder`), and a new one."""
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
    budgets: tuple[Budget, ...]  # ascending
    epochs: int
    search_seeds: tuple[int, ...]
    strategies: tuple[str, ...]
    folder: Path
    name: str
    tracking_uri: str
    mlflow_experiment: str
    quiet: bool
    keep_checkpoints: bool = False
    reference_trials: int = 0
    reference_top: int = 5
    confirm_top: int = 2
    confirm_seeds: int = 3

    @property
    def reference_seed(self) -> int:
        """The reference search's seed: one no strategy run searches with."""
        return len(self.search_seeds)

    @property
    def fresh_seeds(self) -> list[int]:
        """The confirmations' seeds: after every seed a search trial or a default run used."""
        used = {*self.search_seeds, self.reference_seed}
        used |= {s * b.default_seeds + i for b in self.budgets for s in self.search_seeds
                 for i in range(b.default_seeds)}
        return fresh_seeds(used, self.confirm_seeds)


def _budgets(args: argparse.Namespace, exp: Experiment) -> tuple[Budget, ...]:
    """The budgets of the command line, each checked against one trial's epochs."""
    epochs, search = exp.trial.epochs, exp.search
    given = args.budget if args.budget is not None else tuple(
        t * epochs for t in (args.budget_trials or (search.num_samples,)))
    if args.seeds is not None and len(given) > 1:
        raise ConfigError(f"--seeds {args.seeds}: one budget only (given {len(given)})")
    out = []
    for budget in given:
        if budget < epochs:
            raise ConfigError(f"--budget {budget}: less than one trial ({epochs} epochs); give "
                              f"at least {epochs} trial-epochs")
        runs = runs_for_budget(budget, epochs)
        default_seeds = args.seeds if args.seeds is not None else runs
        if not within_one_trial(default_seeds * epochs, budget, epochs):
            raise ConfigError(f"--seeds {default_seeds}: {default_seeds} × {epochs} epochs = "
                              f"{default_seeds * epochs} trial-epochs, not the budget {budget} "
                              f"± one trial; leave it out (default {runs})")
        out.append(Budget(budget, epochs, default_seeds,
                          tpe_trial_cap(budget, epochs, search.grace_period,
                                        search.max_concurrent)))
    return tuple(out)


def plan(args: argparse.Namespace) -> Plan:
    """Validate the command line and the files; :class:`ConfigError` (one line) on bad input."""
    from sslsearch.cli import Overrides
    from sslsearch.search import preflight, sweep
    from sslsearch.search.space import load_space

    space_path = resolve_file(args.space, SPACES_DIR, "space")
    overrides = Overrides(max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                          epochs=args.epochs, data_dir=args.data_dir)
    exp = overrides.apply(load_experiment(args.experiment))
    space = load_space(space_path, exp.trial, exp.methods)
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
    budgets = _budgets(args, exp)
    if is_remote(args.storage):
        raise ConfigError(f"--storage {args.storage}: the benchmark writes to a local folder")
    name = args.name if args.name is not None else sweep.new_sweep_id(
        f"bench-search-{space_path.stem}")
    storage = str(Path(args.storage).expanduser().resolve())
    folder = validate_name(name, Path(storage))
    tracking_uri = normalize_uri(args.tracking_uri)
    check_reachable(tracking_uri)
    preflight.check_sweep(exp, space, storage, name, tracking_uri,  # before Ray
                          skip_hint="trial.skip_bad_images: true in the experiment")
    return Plan(exp=exp, space=space.only(method), space_path=space_path, method=method,
                budgets=budgets, epochs=exp.trial.epochs,
                search_seeds=tuple(range(args.search_seeds)), strategies=strategies,
                folder=folder, name=name, tracking_uri=tracking_uri,
                mlflow_experiment=args.mlflow_experiment, quiet=bool(args.quiet),
                keep_checkpoints=bool(args.keep_checkpoints),
                reference_trials=args.reference_trials, reference_top=args.reference_top,
                confirm_top=args.confirm_top, confirm_seeds=args.confirm_seeds)


# ------------------------------------------------------------------------------------------------
# The command


def command_line(argv: Sequence[str]) -> str:
    return " ".join([Path(sys.executable).name, "-m", "sslsearch.bench", "search",
                     *(shlex.quote(a) for a in argv)])


@dataclasses.dataclass
class Progress:
    """What the benchmark has run so far: its rows, and what MLflow is told at the end."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    stages: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, results: Sequence[Any], stage: str) -> None:
        for r in results:
            if r.metrics and "trial_id" in r.metrics:
                self.last_results[str(r.metrics["trial_id"])] = r.metrics
                self.stages[str(r.metrics["trial_id"])] = stage


def _reference(p: Plan, confirmer: Confirmer, defaults: Candidate, done: Progress
               ) -> dict[str, Any] | None:
    """The reference random search and its confirmation (None without one)."""
    if not p.reference_trials:
        return None
    b = Budget(p.reference_trials * p.epochs, p.epochs, p.reference_trials, p.reference_trials)
    print(f"\n== reference: random search of {p.reference_trials} trials (seed "
          f"{p.reference_seed}), its top {p.reference_top} confirmed", flush=True)
    results, wall = run_strategy(p, "random", p.reference_seed, b)
    done.add(results, f"reference seed {p.reference_seed}")
    _, records = summarize_run(p, "random", p.reference_seed, b, results, wall)
    ref = reference(confirmer, records, p.reference_top, defaults)
    ref["wall_s"] = wall
    return ref


def run(p: Plan, argv: Sequence[str]) -> int:
    from sslsearch.search import sweep

    command = command_line(argv)
    _log_start(p, command)
    p.folder.mkdir(parents=True)
    t0 = time.time()
    sweep.start_ray(p.exp.search, None)
    sweep.check_resources(p.exp.search, None)
    done = Progress()
    confirmer = Confirmer(p, p.fresh_seeds)
    defaults = confirmer.defaults()
    ref = _reference(p, confirmer, defaults, done)
    best = ref["best"]["stat"]["mean"] if ref and ref["best"]["stat"] else None
    for b in p.budgets:
        for seed in p.search_seeds:
            for strategy in p.strategies:
                print(f"\n== {strategy}, {b.trials} trials, search seed {seed}", flush=True)
                results, wall = run_strategy(p, strategy, seed, b)
                row, records = summarize_run(p, strategy, seed, b, results, wall)
                conf = confirm_run(confirmer, strategy, records, run_name(strategy, b, seed))
                row["confirmed"] = confirmed_row(conf, best)
                done.rows.append(row)
                done.add(results, f"{strategy} budget {b.trials} search-seed {seed}")
                print(f"== {strategy}, {b.trials} trials, search seed {seed}: {row['spent']} "
                      f"trial-epochs, {wall:.0f} s, best val kNN "
                      f"{pct(row['best'] and row['best']['val_knn_acc'])}, confirmed "
                      f"{pct((row['confirmed']['stat'] or {}).get('mean'))}", flush=True)
    info = _info(p, command, time.time() - t0, confirmer, defaults)
    md, written = write_results(p.folder, info, done.rows, ref)
    summary = aggregate(done.rows, p.strategies)
    link = _log_end(p, summary, written, done)
    print(f"\n{md}")
    print(f"report: {p.folder / RESULTS_MD}\nMLflow runs: mlflow ui --backend-store-uri "
          f"{p.tracking_uri} --host 127.0.0.1 --port 5000, then open {link}")
    off = [f"{s['strategy']} ({s['budget_trials']} trials)" for s in summary
           if not s["within_budget"]]
    if off:
        print(f"warning: {', '.join(off)} spent more or less than the budget ± one trial "
              "(failed trials?); see the per-seed table", file=sys.stderr)
    return 0


def _info(p: Plan, command: str, elapsed: float, confirmer: Confirmer, defaults: Candidate
          ) -> dict[str, Any]:
    metric = p.exp.search.metric
    return {"name": p.name, "command": command, "space": p.space_path.name,
            "experiment": Path(p.exp.source).name, "method": p.method,
            "dataset": p.exp.trial.dataset, "backbone": p.exp.trial.backbone,
            "epochs": p.epochs, "budgets": [b.to_json() for b in p.budgets],
            "search_seeds": list(p.search_seeds), "strategies": list(p.strategies),
            "metric": metric, "selection": SELECTION, "wall_seconds": elapsed,
            "fresh_seeds": confirmer.seeds, "confirm_top": p.confirm_top,
            "confirmation_runs": confirmer.trained,
            "defaults": {"values": defaults.values(metric),
                         "stat": (dataclasses.asdict(s) if (s := defaults.stat(metric))
                                  else None)}}


def _log_start(p: Plan, command: str) -> None:
    from sslsearch.search import tracking

    tracker = tracking.Tracker(p.tracking_uri, p.mlflow_experiment, p.name)
    budgets = ",".join(str(b.trials) for b in p.budgets)
    tracker.log_sweep(
        params={"space": p.space_path.name, "experiment": Path(p.exp.source).name,
                "method": p.method, "epochs": p.epochs, "budgets_trials": budgets,
                "search_seeds": ",".join(map(str, p.search_seeds)),
                "strategies": ",".join(p.strategies), "metric": p.exp.search.metric,
                "reference_trials": p.reference_trials, "reference_top": p.reference_top,
                "confirm_top": p.confirm_top, "confirm_seeds": p.confirm_seeds},
        tags={**provenance.sweep_tags(), "command": command, "sslsearch.kind": "bench_search"},
        texts={"space.yaml": p.space_path.read_text(),
               "experiment.yaml": Path(p.exp.source).read_text(), "command.txt": command + "\n"})
    print(f"bench search {p.name}: {p.method} ({p.space_path.name}), experiment "
          f"{Path(p.exp.source).name}; budgets of {budgets} trials per strategy "
          f"({', '.join(p.strategies)}) × {len(p.search_seeds)} search seeds; answers confirmed "
          f"on seeds {', '.join(map(str, p.fresh_seeds))}\n"
          f"  results: {p.folder}\n  MLflow:  {p.tracking_uri}", flush=True)


def _log_end(p: Plan, summary: Sequence[dict[str, Any]], written: Sequence[Path],
             done: Progress) -> str:
    """Stages, baselines, the strategies' means and the report files on the parent run; returns
    the MLflow link to the runs."""
    from sslsearch.search import tracking

    tracker = tracking.Tracker(p.tracking_uri, p.mlflow_experiment, p.name)  # fresh after fits
    for trial_id, stage in done.stages.items():
        tracker.client.set_tag(tracker.child(trial_id, "", {}), "sslsearch.stage", stage)
    for metrics in done.last_results.values():
        tracker.log_parent_baselines(metrics)
    for s in summary:
        for key, stat in itertools.product(("best_val_knn_acc", "confirmed", "regret"),
                                           ("mean", "std")):
            if s[key][stat] is not None:
                tracker.client.log_metric(
                    tracker.parent_id, f"{s['strategy']}.{s['budget_trials']}t.{key}.{stat}",
                    s[key][stat])
    for path in written:
        tracker.log_parent_file(path)
    tracker.end_sweep(done.last_results, p.epochs, "FINISHED")
    return str(tracker.runs_link())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sslsearch.bench search …``: exit code 2 and one line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    console.quiet_libraries()
    return exit_code(lambda: run(plan(build_parser().parse_args(argv)), argv))


if __name__ == "__main__":
    sys.exit(main())
