"""Which method wins? A fair, tuned comparison of every method of a search space.

    python -m sslsearch.run --space all_methods.yaml --compare --methods simclr,byol,vicreg,barlow

1. **Equal search budgets.** Each method gets its own search with the same number of trials
   (``--num-samples``, per method), the same epochs, the same seeded TPE and the same ASHA
   schedule: the method is fixed, its own and the shared parameters are searched.
2. **Selection on validation only.** Each method's best configuration is the finished trial
   (one that trained all its configured epochs, :func:`sslsearch.space.trial_status`) with the
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
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslsearch.config import SPACES_DIR, load_experiment, resolve_file, results_folder
from sslsearch.errors import ConfigError
from sslsearch.run import (
    BASELINE_KEYS,
    ERROR,
    INIT_KEY,
    RAW_VS,
    delta_points,
    fmt_delta,
    result_status,
)
from sslsearch.space import FINISHED, STOPPED_EARLY

SELECTION = ("probe_val_acc (linear probe on the validation split held out of the training set) "
             "among the finished trials (those that trained all their configured epochs); ties: "
             "val_knn_acc. When no finished trial has a probe (probe: false, or none finished): "
             "the last val_knn_acc, among the finished trials, else among those stopped early by "
             "ASHA. Failed trials are never selected. Test accuracy is never used to select.")


@dataclasses.dataclass
class TrialRecord:
    """One trial as the comparison and the report need it (plain data, no Ray objects)."""

    method: str
    trial_id: str
    stage: str  # "search" or "seed"
    params: dict[str, Any]  # the searched values, keyed as the space names them
    config: dict[str, Any]  # Ray's config: trial_from_config() of it rebuilds the TrialConfig
    status: str  # finished, stopped early, failed: <reason>, error
    epochs: list[float]
    val_knn: list[float]
    seconds: float
    metrics: dict[str, Any]  # the last result
    checkpoint: Any = None
    seed: int | None = None

    @property
    def val_knn_acc(self) -> float | None:
        v = self.metrics.get("val_knn_acc")
        return None if self.status.startswith(("failed", "error")) or v is None else float(v)

    @property
    def probe_val_acc(self) -> float | None:
        v = self.metrics.get("probe_val_acc")
        return None if v is None or self.status != "finished" else float(v)

    def to_json(self) -> dict[str, Any]:
        keep = ("val_knn_acc", "probe_val_acc", "probe_test_acc", "test_knn_acc", "epoch",
                "time_total_s", "effective_rank", "embed_std_ratio", *BASELINE_KEYS)
        return {"method": self.method, "trial_id": self.trial_id, "stage": self.stage,
                "seed": self.seed, "status": self.status, "params": self.params,
                "seconds": self.seconds, "epochs_trained": len(self.epochs),
                "metrics": {k: self.metrics[k] for k in keep if k in self.metrics}}


def record(result: Any, stage: str, space_keys: Sequence[str] = ()) -> TrialRecord:
    """A :class:`TrialRecord` from a Ray ``Result``."""
    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    # How the trial ended is sslsearch.space.trial_status (via result_status, which adds Ray's
    # errors): finished = trained all its configured epochs, with a probe or without one.
    status = result_status(result)
    if status not in (ERROR, FINISHED, STOPPED_EARLY):  # a failure reason
        status = f"failed: {status}"
    epochs: list[float] = []
    val_knn: list[float] = []
    try:
        df = result.metrics_dataframe
    except Exception:  # no progress file (a trial that errored at once)
        df = None
    if df is not None and "val_knn_acc" in df and "epoch" in df:
        rows = df[["epoch", "val_knn_acc"]].dropna()
        last: dict[float, float] = {}  # a restarted trial may report an epoch twice
        for e, v in zip(rows["epoch"], rows["val_knn_acc"], strict=True):
            last[float(e)] = float(v)
        epochs, val_knn = list(last), list(last.values())
    params = {k: config[k] for k in space_keys if k in config}
    return TrialRecord(
        method=str(config.get("method", "?")), trial_id=str(metrics.get("trial_id", "?")),
        stage=stage, params=params, config=config, status=status, epochs=epochs,
        val_knn=val_knn, seconds=float(metrics.get("time_total_s", 0.0)), metrics=metrics,
        checkpoint=result.checkpoint,
        seed=int(config["seed"]) if "seed" in config else None)


def select_best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The method's configuration to re-run: see :data:`SELECTION`."""
    probed = [t for t in trials if t.status == FINISHED and t.probe_val_acc is not None]
    if probed:
        return max(probed, key=lambda t: (t.probe_val_acc or 0.0, t.val_knn_acc or 0.0))
    for status in (FINISHED, STOPPED_EARLY):  # no probe: the kNN monitor, finished trials first
        alive = [t for t in trials if t.status == status and t.val_knn_acc is not None]
        if alive:
            return max(alive, key=lambda t: t.val_knn_acc or 0.0)
    return None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value); None when empty."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


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
        f"{info['search_seed']}, ASHA on {info['metric']}), then the selected configuration "
        f"re-trained with seeds {info['seeds']}.\n\n"
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


def _trial_keys(space: Any) -> list[str]:
    from sslsearch.space import Dist

    keys = [k for k, v in space.trial.items() if isinstance(v, Dist)]
    for method, params in space.methods.items():
        keys += [f"{method}.{k}" for k, v in params.items() if isinstance(v, Dist)]
    return keys


def _fit(tuner: Any) -> Any:
    """``tuner.fit()``; Ray Tune returns (not raises) on Ctrl+C, with trials left unfinished:
    that must end the comparison, not carry on with half a search."""
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(grid):
        print("comparison interrupted; a comparison cannot be resumed: start it again",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    return grid


def only_method(space: Any, method: str) -> Any:
    """``space`` with its method fixed to ``method`` (and only that method's initial points)."""
    changes: dict[str, Any] = {"method": method}
    if getattr(space, "initial", None):
        changes["initial"] = tuple(
            {k: v for k, v in p.items() if k != "method"} for p in space.initial
            if p.get("method", method) == method)
    return dataclasses.replace(space, **changes)


def run_compare(args: argparse.Namespace, argv: list[str]) -> int:
    """``python -m sslsearch.run --compare``: see the module docstring."""
    from sslsearch import report, sweep, tracking
    from sslsearch.run import apply_overrides, storage_location
    from sslsearch.space import load_space

    if args.resume is not None:
        raise ConfigError("--compare cannot be resumed; start it again (each method's search "
                          "is a separate Ray experiment under the comparison's folder)")
    if not args.space:
        raise ConfigError("--compare needs --space (e.g. --space all_methods.yaml)")
    space_path = resolve_file(args.space, SPACES_DIR, "space")
    exp = apply_overrides(load_experiment(args.experiment), args)
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
    folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking.normalize_uri(args.tracking_uri)
    tracking.check_reachable(tracking_uri)
    address = args.address or None  # None: $RAY_ADDRESS, else a fresh local Ray (sweep.init_ray)
    seeds = [exp.trial.seed + 1 + i for i in range(args.seeds)]
    command = sweep.python_command([shlex.quote(a) for a in argv])
    keys = _trial_keys(space)

    tracker = tracking.Tracker(tracking_uri, args.mlflow_experiment, name)
    tracker.log_sweep(
        params={"space": space_path.name, "experiment": Path(exp.source).name,
                "num_samples_per_method": exp.search.num_samples, "epochs": exp.trial.epochs,
                "metric": exp.search.metric, "seed": exp.trial.seed, "compare": True,
                "methods": ",".join(methods), "seeds": ",".join(map(str, seeds))},
        tags={**tracking.sweep_tags(), "command": command, "sslsearch.kind": "compare"},
        texts={"space.yaml": space_path.read_text(),
               "experiment.yaml": Path(exp.source).read_text(), "command.txt": command + "\n"})
    print(f"comparison {name}: {', '.join(methods)}; {exp.search.num_samples} search trials × "
          f"≤ {exp.trial.epochs} epochs per method, then {len(seeds)} seeds each\n"
          f"  results: {folder}\n  MLflow:  {tracking_uri}", flush=True)

    # Every epoch checkpoints; Tune's "snapshotting too often" warning is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    t0 = time.time()
    sweep.init_ray(address)
    search: dict[str, list[TrialRecord]] = {}
    seed_runs: dict[str, list[TrialRecord]] = {}
    best: dict[str, TrialRecord | None] = {}
    last_results: dict[str, dict[str, Any]] = {}
    for method in methods:
        print(f"\n== {method}: search ({exp.search.num_samples} trials)", flush=True)
        settings = sweep.SweepSettings(name=name, storage=str(folder / f"search-{method}"),
                                       tracking_uri=tracking_uri,
                                       mlflow_experiment=args.mlflow_experiment,
                                       seed=exp.trial.seed, address=address)
        tuner = sweep.build_tuner(exp, only_method(space, method), settings, quiet=args.quiet)
        grid = _fit(tuner)
        results = [grid[i] for i in range(len(grid))]
        search[method] = [record(r, "search", keys) for r in results]
        best[method] = select_best(search[method])
        chosen = best[method]
        if chosen is None:
            print(f"== {method}: no usable trial; no seed re-runs", flush=True)
            seed_runs[method] = []
            continue
        label = "probe val acc " if chosen.probe_val_acc is not None else ""
        print(f"== {method}: selected {chosen.trial_id} ({label}{_selected_by(chosen)}); "
              f"re-running with seeds {seeds}", flush=True)
        grid = _fit(sweep.build_seed_tuner(chosen.config, seeds, exp, str(folder),
                                           f"seeds-{method}", name, tracking_uri,
                                           args.mlflow_experiment, args.quiet))
        seed_results = [grid[i] for i in range(len(grid))]
        seed_runs[method] = [record(r, "seed", keys) for r in seed_results]
        for r in [*results, *seed_results]:
            if r.metrics and "trial_id" in r.metrics:
                last_results[str(r.metrics["trial_id"])] = r.metrics
    elapsed = time.time() - t0

    tracker = tracking.Tracker(tracking_uri, args.mlflow_experiment, name)  # fresh after fits
    for t in (t for runs in (*search.values(), *seed_runs.values()) for t in runs):
        tracker.log_parent_baselines(t.metrics)  # once; a no-op when the callbacks logged them
    for t in (t for runs in seed_runs.values() for t in runs):
        tracker.client.set_tag(tracker.child(t.trial_id, "", {}), "sslsearch.stage",
                               f"seed re-run {t.seed}")
    rows = summarize(search, seed_runs, best)
    info = {"name": name, "command": command, "space": space_path.name,
            "experiment": Path(exp.source).name, "dataset": exp.trial.dataset,
            "backbone": exp.trial.backbone, "epochs": exp.trial.epochs,
            "num_samples": exp.search.num_samples, "search_seed": exp.trial.seed,
            "metric": exp.search.metric, "seeds": seeds, "n_seeds": len(seeds),
            "methods": methods, "selection": SELECTION, "wall_seconds": elapsed}
    md = comparison_markdown(info, rows)
    doc = {**info, "rows": rows,
           "trials": [t.to_json() for runs in (*search.values(), *seed_runs.values())
                      for t in runs]}
    (folder / "comparison.md").write_text(md)
    (folder / "comparison.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tracker.log_parent_file(folder / "comparison.md")
    tracker.log_parent_file(folder / "comparison.json")

    # Encoders: each method's selected trial, and the best of them on validation.
    from sslsearch.export import export_trial

    exports: dict[str, Path] = {}
    for method, chosen in best.items():
        if chosen is None:
            continue
        out = export_trial(chosen.config, chosen.checkpoint, folder / "encoders" / method,
                           extra={"trial_id": chosen.trial_id,
                                  "probe_val_acc": chosen.probe_val_acc})
        if out is not None:
            exports[method] = out
            for path in sorted(out.iterdir()):
                tracker.log_parent_file(path, f"encoders/{method}")
    eligible = [b for b in best.values() if b is not None and b.method in exports]
    winner = max(eligible, key=lambda t: (t.probe_val_acc or 0.0, t.val_knn_acc or 0.0),
                 default=None)
    if winner is not None:
        import shutil

        shutil.copytree(exports[winner.method], folder / "best_encoder", dirs_exist_ok=True)
        for path in sorted((folder / "best_encoder").iterdir()):
            tracker.log_parent_file(path, "best_encoder")

    written = report.write_report(
        folder, md, [t for runs in (*search.values(), *seed_runs.values()) for t in runs],
        best, space, winner_encoder=None if winner is None else folder / "best_encoder",
        winner=None if winner is None else winner.method, metric=exp.search.metric)
    for path in written:
        tracker.log_parent_file(path, "report")
    tracker.end_sweep(last_results, exp.trial.epochs, "FINISHED")

    print()
    print(md)
    print(f"comparison: {folder / 'comparison.md'}\nreport:     {folder / 'report.md'}")
    if winner is not None:
        print(f"best encoder ({winner.method}, selected on validation): {folder / 'best_encoder'}"
              " (load with sslsearch.load_encoder)")
    print(f"MLflow runs: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 "
          f"--port 5000, then open {tracker.runs_link()}")
    print(f"done in {elapsed:.0f} s")
    return 0
