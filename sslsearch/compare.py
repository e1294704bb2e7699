"""Which method wins? A fair, tuned comparison of every method of a search space.

    python -m sslsearch.run --space all_methods.yaml --compare --methods simclr,byol,vicreg,barlow

1. **Equal search budgets.** Each method gets its own search with the same number of trials
   (``--num-samples``, per method), the same epochs, the same seeded TPE and the same ASHA
   schedule: the method is fixed, its own and the shared parameters are searched.
2. **Selection on validation only.** Each method's best configuration is the finished trial
   (one that trained all its configured epochs, :func:`sslsearch.results.trial_status`) with the
   highest ``probe_val_acc`` (a linear probe on frozen features, scored on the validation split
   held out of the training set); ties go to ``val_knn_acc``. When no finished trial has a probe
   (``probe: false``, or none finished), the highest last ``val_knn_acc`` is taken: among the
   finished trials, else among those ASHA stopped early. Failed trials are never selected. The
   test split plays no part in any choice.
3. **Seeds.** The selected configuration is re-trained with ``--seeds N`` fresh seeds (not the
   seed its search used: the selection's luck must not carry over), through Ray like any trial.
   The table reports mean ± sample std (ddof 1) over those seeds of the linear-probe **test**
   accuracy, the test kNN accuracy and the validation kNN accuracy, and the compute each method
   spent (trial-seconds and epochs, search and seeds apart).
4. **Baselines.** Beside each accuracy: the same measure on the standardised raw pixels of the
   same split (``raw_probe_test_acc``, ``raw_test_knn_acc``, ``raw_knn_acc``; one value per split,
   carried from the trials' results) and the difference "vs raw pixels" in points; beside the
   val kNN accuracy also the random-init encoder's (``init_knn_acc``, mean ± std over the seed
   runs: each seed initialises its own encoder) and the difference "vs random init".

Writes ``comparison.md``, ``comparison.json``, the report (``report.md`` + PNG plots, see
:mod:`sslsearch.report`), one encoder export per method (``encoders/<method>``) and the overall
best (``best_encoder``) into the comparison's folder, and logs them all to its parent MLflow run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslsearch.cli import Overrides, storage_location
from sslsearch.config import SPACES_DIR, Experiment, load_experiment
from sslsearch.errors import ConfigError
from sslsearch.outbox import OUTBOX_FILE
from sslsearch.results import (
    BASELINE_KEYS,
    INIT_KEY,
    RAW_KEYS,
    RAW_VS,
    SELECTION,
    TrialRecord,
    delta_points,
    fmt_delta,
    mean_std,
    record,
    select_best,
)
from sslsearch.schema import resolve_file, results_folder
from sslsearch.summary import correlation_markdown


def summarize(search: dict[str, list[TrialRecord]], seeds: dict[str, list[TrialRecord]],
              best: dict[str, TrialRecord | None]) -> list[dict[str, Any]]:
    """One row per method, ordered by mean linear-probe test accuracy (best first)."""
    rows = []
    for method, trials in search.items():
        runs = [t for t in seeds.get(method, []) if t.status == "finished"]
        row: dict[str, Any] = {"method": method}
        for key in ("probe_test_acc", "test_knn_acc", "val_knn_acc", "probe_val_acc",
                    *BASELINE_KEYS):
            mean, std = mean_std([float(t.metrics[key]) for t in runs if key in t.metrics])
            row[key] = {"mean": mean, "std": std, "n": len(runs)}
        # The raw-pixel baseline is one value per split: carried from any trial of the method
        # when no seed run finished (the random-init kNN is per trial: seed runs only).
        for key in RAW_VS.values():
            if row[key]["mean"] is None:
                carried = [float(t.metrics[key]) for t in [*seeds.get(method, []), *trials]
                           if key in t.metrics]
                mean, std = mean_std(carried)
                row[key] = {"mean": mean, "std": std, "n": len(carried)}
        # Differences of the means (fractions; the table shows points): what pretraining added.
        row["vs_raw"] = {acc: _diff(row[acc], row[raw]) for acc, raw in RAW_VS.items()}
        row["vs_init"] = {"val_knn_acc": _diff(row["val_knn_acc"], row[INIT_KEY])}
        chosen = best.get(method)
        row["selected"] = None if chosen is None else {
            "trial_id": chosen.trial_id, "probe_val_acc": chosen.probe_val_acc,
            "val_knn_acc": chosen.val_knn_acc, "params": chosen.params}
        row["search"] = {
            "trials": len(trials),
            "finished": sum(t.status == "finished" for t in trials),
            "stopped_early": sum(t.status == "stopped early" for t in trials),
            "failed": sum(t.status.startswith(("failed", "error")) for t in trials),
            "epochs": int(sum(len(t.epochs) for t in trials)),
            "trial_seconds": sum(t.seconds for t in trials)}
        seed_runs = seeds.get(method, [])
        row["seeds"] = {"runs": len(seed_runs), "finished": len(runs),
                        "seeds": [t.seed for t in seed_runs],
                        "epochs": int(sum(len(t.epochs) for t in seed_runs)),
                        "trial_seconds": sum(t.seconds for t in seed_runs)}
        rows.append(row)
    rows.sort(key=lambda r: -(r["probe_test_acc"]["mean"] if r["probe_test_acc"]["mean"]
                              is not None else -1.0))
    return rows


def _diff(stat: dict[str, Any], base: dict[str, Any]) -> float | None:
    points = delta_points(stat["mean"], base["mean"])
    return None if points is None else points / 100.0


def _pm(stat: dict[str, Any], scale: float = 100.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}"


def _one(stat: dict[str, Any], scale: float = 100.0) -> str:
    """A baseline: its value, or mean ± std where the runs disagree (a searched k or T)."""
    if stat["mean"] is None:
        return "n/a"
    if not stat["std"]:
        return f"{stat['mean'] * scale:.2f}"
    return _pm(stat, scale)


def _vs(diff: float | None) -> str:
    return fmt_delta(None if diff is None else diff * 100.0, digits=2)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _selected_by(sel: Any) -> str:
    """The validation score a trial was selected on: its probe val acc, else (no probe) its
    val kNN acc. ``sel``: a :class:`TrialRecord` or a row's ``selected`` dict."""
    def get(key: str) -> Any:
        return sel.get(key) if isinstance(sel, dict) else getattr(sel, key)

    probe = get("probe_val_acc")
    return _short(probe) if probe is not None else f"no probe; val kNN {_short(get('val_knn_acc'))}"


def table_markdown(rows: Sequence[dict[str, Any]], n_seeds: int) -> str:
    """The comparison table (accuracies in %), one row per method."""
    lines = [f"| method | linear probe test acc (mean ± std, {n_seeds} seeds) | raw pixels | "
             "vs raw pixels | test kNN acc | raw pixels | vs raw pixels | val kNN acc | "
             "raw pixels | vs raw pixels | random init | vs random init | "
             "selected trial (probe val acc) | search: finished/stopped/failed | "
             "search epochs | search trial-s | seed-runs trial-s | selected parameters |",
             "|---" * 18 + "|"]
    for r in rows:
        sel = r["selected"]
        chosen = "none" if sel is None else f"{sel['trial_id']} ({_selected_by(sel)})"
        params = "" if sel is None else ", ".join(
            f"{k}={_short(v)}" for k, v in sorted(sel["params"].items()))
        s = r["search"]
        raw, vs = r.get("vs_raw", {}), r.get("vs_init", {})
        missing = {"mean": None}
        lines.append(
            f"| {r['method']} | {_pm(r['probe_test_acc'])} | "
            f"{_one(r.get('raw_probe_test_acc', missing))} | "
            f"{_vs(raw.get('probe_test_acc'))} | {_pm(r['test_knn_acc'])} | "
            f"{_one(r.get('raw_test_knn_acc', missing))} | {_vs(raw.get('test_knn_acc'))} | "
            f"{_pm(r['val_knn_acc'])} | {_one(r.get('raw_knn_acc', missing))} | "
            f"{_vs(raw.get('val_knn_acc'))} | {_pm(r.get(INIT_KEY, missing))} | "
            f"{_vs(vs.get('val_knn_acc'))} | {chosen} | {s['finished']}/{s['stopped_early']}/"
            f"{s['failed']} | {s['epochs']} | {s['trial_seconds']:.0f} | "
            f"{r['seeds']['trial_seconds']:.0f} | {params} |")
    return "\n".join(lines) + "\n"


def comparison_markdown(info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    n = info["n_seeds"]
    return (
        f"# Method comparison {info['name']}\n\n"
        f"Command: `{info['command']}`\n\n"
        f"Space `{info['space']}`, experiment `{info['experiment']}` "
        f"(dataset {info['dataset']}, backbone {info['backbone']}, {info['epochs']} epochs a "
        f"trial). Equal budgets: {info['num_samples']} search trials per method (TPE seed "
        f"{info['search_seed']}; TPE and ASHA rank trials by {info['metric']}), then the selected "
        f"configuration re-trained with seeds {info['seeds']}.\n\n"
        f"Selection: {SELECTION}\n\n"
        f"{table_markdown(rows, n)}\n"
        "Accuracies in %, mean ± sample std (ddof 1) over the seed re-runs; rows ordered by mean "
        "linear-probe test accuracy. Differences within about one std are not meaningful. "
        "*raw pixels*: the same measure (same linear probe, same kNN k and T) on the "
        "standardised raw pixels of the same split; *random init*: the val kNN accuracy of each "
        "seed run's encoder before its first step; *vs …*: mean accuracy minus the baseline, in "
        "points (positive: pretraining helped). "
        "Compute: trial-seconds = sum of the trials' wall time (Ray's time_total_s: training, "
        "kNN monitoring and probe), epochs = pretraining epochs actually run.\n"
        f"\nTotal wall time {info['wall_seconds']:.0f} s.\n")


# ------------------------------------------------------------------------------------------------
# The command


def trial_keys(space: Any) -> list[str]:
    from sslsearch.space import Dist

    keys = [k for k, v in space.trial.items() if isinstance(v, Dist)]
    for method, params in space.methods.items():
        keys += [f"{method}.{k}" for k, v in params.items() if isinstance(v, Dist)]
    return keys


def _fit(tuner: Any) -> list[Any]:
    """``tuner.fit()``; Ray Tune returns (not raises) on Ctrl+C, with trials left unfinished:
    that must end the comparison, not carry on with half a search."""
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(grid):
        print("comparison interrupted; a comparison cannot be resumed: start it again",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    return [grid[i] for i in range(len(grid))]


def only_method(space: Any, method: str) -> Any:
    """``space`` with its method fixed to ``method`` (and only that method's initial points)."""
    changes: dict[str, Any] = {"method": method}
    if getattr(space, "initial", None):
        changes["initial"] = tuple(
            {k: v for k, v in p.items() if k != "method"} for p in space.initial
            if p.get("method", method) == method)
    return dataclasses.replace(space, **changes)


@dataclasses.dataclass
class Comparison:
    """One ``--compare`` run: what it compares, where it writes, where it logs."""

    name: str
    folder: Path
    space_path: Path
    space: Any  # sslsearch.space.SearchSpace
    exp: Experiment
    methods: list[str]
    seeds: list[int]
    tracking_uri: str
    mlflow_experiment: str
    command: str
    address: str | None
    quiet: bool

    @property
    def outbox(self) -> Path:  # the tracking outbox of all its sweeps (sslsearch.outbox)
        return self.folder / OUTBOX_FILE


@dataclasses.dataclass
class Outcome:
    """What the comparison found: each method's search, its selected trial and its seed runs."""

    search: dict[str, list[TrialRecord]] = dataclasses.field(default_factory=dict)
    seed_runs: dict[str, list[TrialRecord]] = dataclasses.field(default_factory=dict)
    best: dict[str, TrialRecord | None] = dataclasses.field(default_factory=dict)
    last_results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def all_trials(self) -> list[TrialRecord]:
        return [t for runs in (*self.search.values(), *self.seed_runs.values()) for t in runs]


def run_compare(args: argparse.Namespace, argv: list[str]) -> int:
    """``python -m sslsearch.run --compare``: see the module docstring."""
    from sslsearch import sweep

    c = _plan(args, argv)
    sweep.init_ray(c.address)
    sweep.check_resources(c.exp.search, c.address)  # before the comparison's MLflow run exists
    _log_start(c)
    # Every epoch checkpoints; Tune's "snapshotting too often" warning is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    t0 = time.time()
    outcome = Outcome()
    for method in c.methods:
        _compare_one(c, method, outcome)
    elapsed = time.time() - t0
    md, winner, link = _write_outputs(c, outcome, elapsed)
    print(f"\n{md}")
    print(f"comparison: {c.folder / 'comparison.md'}\nreport:     {c.folder / 'report.md'}")
    if winner is not None:
        print(f"best encoder ({winner}, selected on validation): {c.folder / 'best_encoder'}"
              " (load with sslsearch.load_encoder)")
    print(f"MLflow runs: mlflow ui --backend-store-uri {c.tracking_uri} --host 127.0.0.1 "
          f"--port 5000, then open {link}")
    print(f"done in {elapsed:.0f} s")
    return 0


def _plan(args: argparse.Namespace, argv: list[str]) -> Comparison:
    """Every input checked (and the folder made) before any trial starts."""
    from sslsearch import preflight, sweep, tracking
    from sslsearch.space import load_space

    if args.resume is not None:
        raise ConfigError("--compare cannot be resumed; start it again (each method's search "
                          "is a separate Ray experiment under the comparison's folder)")
    if not args.space:
        raise ConfigError("--compare needs --space (e.g. --space all_methods.yaml)")
    space_path = resolve_file(args.space, SPACES_DIR, "space")
    exp = Overrides.from_args(args).apply(load_experiment(args.experiment))
    if not exp.trial.labels:
        raise ConfigError(f"{exp.source}: --compare selects and reports on labels (probe, kNN), "
                          "and this experiment has none; run a sweep per method instead")
    space = load_space(space_path, exp.trial)
    methods = list(space.method_names)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in methods]
        if unknown:
            raise ConfigError(f"--methods: {', '.join(unknown)} not in {space_path.name} "
                              f"(it draws: {', '.join(methods)})")
        methods = wanted
    storage = storage_location(args.storage)
    if "://" in storage:
        raise ConfigError("--compare writes its report to a local folder: give a local --storage")
    name = args.name or sweep.new_sweep_id(f"compare-{space_path.stem}")
    folder = results_folder(name, storage)  # a user-given name stays in the results folder
    tracking_uri = tracking.normalize_uri(args.tracking_uri)
    tracking.check_reachable(tracking_uri)
    preflight.check_sweep(exp, space, storage, name, tracking_uri, make_folder=True)
    return Comparison(
        name=name, folder=folder, space_path=space_path, space=space, exp=exp, methods=methods,
        seeds=[exp.trial.seed + 1 + i for i in range(args.seeds)], tracking_uri=tracking_uri,
        mlflow_experiment=args.mlflow_experiment,
        command=sweep.python_command([shlex.quote(a) for a in argv]),
        address=args.address or None,  # None: $RAY_ADDRESS, else a fresh local Ray
        quiet=args.quiet)


def _log_start(c: Comparison) -> None:
    from sslsearch import preflight, tracking

    exp, checked = c.exp, preflight.recorded(c.folder)  # the images it left out, if any
    tracking.Tracker(c.tracking_uri, c.mlflow_experiment, c.name).log_sweep(
        params={**checked.params, "space": c.space_path.name, "experiment": Path(exp.source).name,
                "num_samples_per_method": exp.search.num_samples, "epochs": exp.trial.epochs,
                "metric": exp.search.metric, "seed": exp.trial.seed, "compare": True,
                "methods": ",".join(c.methods), "seeds": ",".join(map(str, c.seeds))},
        tags={**tracking.sweep_tags(), "command": c.command, "sslsearch.kind": "compare"},
        texts={**checked.texts, "space.yaml": c.space_path.read_text(),
               "experiment.yaml": Path(exp.source).read_text(), "command.txt": c.command + "\n"})
    print(f"comparison {c.name}: {', '.join(c.methods)}; {exp.search.num_samples} search trials "
          f"× ≤ {exp.trial.epochs} epochs per method, then {len(c.seeds)} seeds each\n"
          f"  results: {c.folder}\n  MLflow:  {c.tracking_uri}", flush=True)


def _compare_one(c: Comparison, method: str, outcome: Outcome) -> None:
    """One method: its search, the selected trial, that trial re-run with every seed."""
    from sslsearch import sweep

    keys = trial_keys(c.space)
    print(f"\n== {method}: search ({c.exp.search.num_samples} trials)", flush=True)
    settings = sweep.SweepSettings(name=c.name, storage=str(c.folder / f"search-{method}"),
                                   tracking_uri=c.tracking_uri,
                                   mlflow_experiment=c.mlflow_experiment, seed=c.exp.trial.seed,
                                   address=c.address, outbox=str(c.outbox))
    results = _fit(sweep.build_tuner(c.exp, only_method(c.space, method), settings,
                                     quiet=c.quiet))
    outcome.search[method] = [record(r, "search", keys) for r in results]
    chosen = outcome.best[method] = select_best(outcome.search[method])
    outcome.seed_runs[method] = []
    if chosen is None:
        print(f"== {method}: no usable trial; no seed re-runs", flush=True)
    else:
        label = "probe val acc " if chosen.probe_val_acc is not None else ""
        print(f"== {method}: selected {chosen.trial_id} ({label}{_selected_by(chosen)}); "
              f"re-running with seeds {c.seeds}", flush=True)
        seed_results = _fit(sweep.build_seed_tuner(
            chosen.config, c.seeds, c.exp, str(c.folder), f"seeds-{method}", c.name,
            c.tracking_uri, c.mlflow_experiment, c.quiet, outbox=c.outbox))
        outcome.seed_runs[method] = [record(r, "seed", keys) for r in seed_results]
        results += seed_results
    for r in results:
        if r.metrics and "trial_id" in r.metrics:
            outcome.last_results[str(r.metrics["trial_id"])] = r.metrics


def _write_outputs(c: Comparison, outcome: Outcome, elapsed: float
                   ) -> tuple[str, str | None, str]:
    """comparison.md/.json, the encoders and the report, logged to the parent run; returns the
    Markdown, the method whose encoder is the overall best (None if none was exported) and the
    MLflow link to the runs."""
    from sslsearch import report, tracking

    outbox = tracking.sweep_outbox(c.outbox, c.tracking_uri, c.mlflow_experiment, c.name)
    for t in outcome.all_trials():  # once; a no-op when the callbacks logged them
        outbox.send("log_parent_baselines", {k: t.metrics[k] for k in RAW_KEYS & t.metrics.keys()})
    for t in (t for runs in outcome.seed_runs.values() for t in runs):
        outbox.send("trial_tag", t.trial_id, "sslsearch.stage", f"seed re-run {t.seed}")
    exp = c.exp
    rows = summarize(outcome.search, outcome.seed_runs, outcome.best)
    info = {"name": c.name, "command": c.command, "space": c.space_path.name,
            "experiment": Path(exp.source).name, "dataset": exp.trial.dataset,
            "backbone": exp.trial.backbone, "epochs": exp.trial.epochs,
            "num_samples": exp.search.num_samples, "search_seed": exp.trial.seed,
            "metric": exp.search.metric, "seeds": c.seeds, "n_seeds": len(c.seeds),
            "methods": c.methods, "selection": SELECTION, "wall_seconds": elapsed}
    correlations = correlation_markdown([(t.method, t.metrics) for t in outcome.all_trials()
                                         if t.stage == "search"])
    md = comparison_markdown(info, rows) + (f"\n{correlations}" if correlations else "")
    doc = {**info, "rows": rows, "trials": [t.to_json() for t in outcome.all_trials()]}
    (c.folder / "comparison.md").write_text(md)
    (c.folder / "comparison.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    outbox.send("log_parent_file", str(c.folder / "comparison.md"))
    outbox.send("log_parent_file", str(c.folder / "comparison.json"))
    winner = _export_encoders(c, outcome.best, outbox)
    written = report.write_report(
        c.folder, md, outcome.all_trials(), outcome.best, c.space,
        winner_encoder=None if winner is None else c.folder / "best_encoder", winner=winner,
        metric=exp.search.metric)
    for path in written:
        outbox.send("log_parent_file", str(path), "report")
    outbox.send("end_sweep", outcome.last_results, exp.trial.epochs, "FINISHED")
    outbox.close(str(c.folder))
    return md, winner, tracking.outbox_link(outbox)


def _export_encoders(c: Comparison, best: dict[str, TrialRecord | None], outbox: Any
                     ) -> str | None:
    """Each method's selected encoder, and the best of them on validation as ``best_encoder``."""
    import shutil

    from sslsearch.export import export_trial

    exports: dict[str, Path] = {}
    for method, chosen in best.items():
        if chosen is None:
            continue
        out = export_trial(chosen.config, chosen.checkpoint, c.folder / "encoders" / method,
                           extra={"trial_id": chosen.trial_id,
                                  "probe_val_acc": chosen.probe_val_acc})
        if out is not None:
            exports[method] = out
            for path in sorted(out.iterdir()):
                outbox.send("log_parent_file", str(path), f"encoders/{method}")
    eligible = [b for b in best.values() if b is not None and b.method in exports]
    winner = max(eligible, key=lambda t: (t.probe_val_acc or 0.0, t.val_knn_acc or 0.0),
                 default=None)
    if winner is None:
        return None
    shutil.copytree(exports[winner.method], c.folder / "best_encoder", dirs_exist_ok=True)
    for path in sorted((c.folder / "best_encoder").iterdir()):
        outbox.send("log_parent_file", str(path), "best_encoder")
    return winner.method
