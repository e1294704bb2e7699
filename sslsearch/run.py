"""The main command: a hyperparameter search over SSL methods.

    python -m sslsearch.run --space vicreg.yaml

Ray Tune runs the trials (``sslsearch.train`` inside ``sslsearch.trainable``), Optuna's TPE
proposes them, ASHA stops poor ones early, and every trial is a child run of the sweep's parent run
in MLflow. ``--resume`` continues an interrupted sweep. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from sslsearch.config import (
    SPACES_DIR,
    Experiment,
    SearchConfig,
    build_dataclass,
    load_experiment,
    resolve_file,
    results_folder,
)
from sslsearch.errors import ConfigError
from sslsearch.space import FINISHED, STOPPED_EARLY, configured_epochs, trial_status

DEFAULT_STORAGE = "sslsearch_results"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2, no usage dump
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, found {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _parser = _Parser(
        prog="python -m sslsearch.run",
        description="Search SSL methods and their hyperparameters (Ray Tune + Optuna TPE + ASHA), "
                    "logging every trial to MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", required=False,
                   help="search-space YAML: a path, or a name under search_spaces/ "
                        "(e.g. vicreg.yaml, all_methods). Required unless --resume.")
    p.add_argument("--experiment", default="quick",
                   help="experiment YAML (fixed setup): a path or a name under experiments/")
    p.add_argument("--num-samples", type=_positive_int,
                   help="number of trials (default: the experiment's search.num_samples)")
    p.add_argument("--max-concurrent", type=_positive_int,
                   help="trials running at once (default: the experiment's)")
    p.add_argument("--epochs", type=_positive_int,
                   help="pretraining epochs per trial (default: the experiment's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the TPE sampler and of every trial")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI: sqlite:///PATH, http://HOST:PORT (a server), ... "
                        "(default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--mlflow-experiment", default="sslsearch",
                   help="MLflow experiment name the sweep's runs go to")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="folder (or s3://... URI) for trial checkpoints and sweep state; "
                        "shared storage (NFS/S3) on a multi-node cluster")
    p.add_argument("--name", help="sweep name (default: <space>-<time>-<random>)")
    p.add_argument("--resume", nargs="?", const="", metavar="NAME_OR_PATH",
                   help="continue an interrupted sweep: its folder, its name under --storage, "
                        "or nothing for the newest sweep there")
    p.add_argument("--address",
                   help="an existing Ray cluster (auto or ray://HOST:PORT; default: "
                        "$RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.add_argument("--grace-period", type=_positive_int,
                   help="epochs before ASHA may stop a trial (default: the experiment's)")
    p.add_argument("--cpus-per-trial", type=_nonneg_float,
                   help="CPUs reserved per trial (default: the experiment's)")
    p.add_argument("--gpus-per-trial", type=_nonneg_float,
                   help="GPUs per trial; fractions pack trials on one GPU, e.g. 0.25 "
                        "(default: the experiment's)")
    p.add_argument("--data-dir", help="dataset folder, overriding the experiment's")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--compare", action="store_true",
                   help="compare the space's methods fairly: --num-samples trials per method, "
                        "the best of each (on validation) re-run with --seeds seeds; writes "
                        "comparison.md/.json and a report (sslsearch/compare.py)")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="--compare: seeds each method's selected configuration is re-run with")
    p.add_argument("--methods",
                   help="--compare: comma-separated subset of the space's methods "
                        "(default: all of them)")
    _ = _parser
    return p


# ------------------------------------------------------------------------------------------------


def apply_overrides(exp: Experiment, args: argparse.Namespace) -> Experiment:
    search = dict(dataclasses.asdict(exp.search))
    for flag, key in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"),
                      ("grace_period", "grace_period"),
                      ("cpus_per_trial", "cpus_per_trial"), ("gpus_per_trial", "gpus_per_trial")):
        if getattr(args, flag) is not None:
            search[key] = getattr(args, flag)
    search_cfg = build_dataclass(SearchConfig, search, source="command line", where="search")
    trial = exp.trial
    changes: dict[str, Any] = {"seed": args.seed}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
        changes["warmup_epochs"] = min(trial.warmup_epochs, float(args.epochs))
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    data_dir = changes.get("data_dir", trial.data_dir)
    if data_dir is not None:  # trials chdir into their own folders: make it absolute now
        path = Path(data_dir).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"data_dir {data_dir!r}: no such folder")
        changes["data_dir"] = str(path)
    trial = dataclasses.replace(trial, **changes)
    return dataclasses.replace(exp, trial=trial, search=search_cfg)


def storage_location(text: str) -> str:
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def _find_resume_folder(args: argparse.Namespace, storage: str) -> Path:
    if "://" in storage:
        raise ConfigError("--resume with a remote --storage needs a local path to the sweep")
    if args.resume:
        given = Path(args.resume).expanduser()
        if given.is_dir():
            return given.resolve()
        return Path(storage) / str(args.resume)
    candidates = sorted(Path(storage).glob("*/sslsearch_sweep.json"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"--resume: no sweep found under {storage}")
    folder: Path = candidates[-1].parent
    return folder


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# The baselines every accuracy is reported against (computed by ``sslsearch.baselines`` and
# ``sslsearch.train``; the names are repeated here so the command imports no torch, and a test
# checks that they match): each accuracy's raw-pixel counterpart on the same split, and the
# trial's own encoder at random initialisation.
RAW_VS = {"val_knn_acc": "raw_knn_acc", "test_knn_acc": "raw_test_knn_acc",
          "probe_val_acc": "raw_probe_acc", "probe_test_acc": "raw_probe_test_acc"}
RAW_KEYS = tuple(RAW_VS.values())
INIT_KEY = "init_knn_acc"
BASELINE_KEYS = (*RAW_KEYS, INIT_KEY)


def _number(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def baselines_of(metrics: Any) -> dict[str, float]:
    """The baseline accuracies a trial's result carries (none in results that predate them)."""
    out = {}
    for key in BASELINE_KEYS:
        v = _number((metrics or {}).get(key))
        if v is not None:
            out[key] = v
    return out


def delta_points(value: Any, base: Any) -> float | None:
    """``value − base`` in percentage points; None unless both are finite numbers."""
    v, b = _number(value), _number(base)
    return None if v is None or b is None else (v - b) * 100.0


def fmt_delta(points: float | None, digits: int = 1) -> str:
    """A signed difference in points: ``+1.3``, ``−2.0`` (a true minus sign), ``±0.0``;
    ``n/a`` when there is nothing to compare."""
    if points is None:
        return "n/a"
    text = f"{points:+.{digits}f}"
    if float(text) == 0.0:
        return f"±{0.0:.{digits}f}"
    return text.replace("-", "−")


def value_range(values: Any, fmt: Any = _fmt) -> str:
    """One value, ``lo–hi`` when they differ, ``n/a`` when there are none."""
    vals = sorted({v for v in (_number(x) for x in values) if v is not None})
    if not vals:
        return "n/a"
    lo, hi = fmt(vals[0]), fmt(vals[-1])
    return lo if lo == hi else f"{lo}–{hi}"


def baseline_line(rows: list[dict[str, Any]]) -> str:
    """The line above the summary's tables: the split's raw-pixel baselines and the range of the
    trials' random-init kNN accuracies."""
    def values(key: str) -> list[float]:
        return [r["baselines"][key] for r in rows if key in r.get("baselines", {})]

    if not any(r.get("baselines") for r in rows):
        return ("**Baselines**: n/a (these results carry no raw-pixel or random-init "
                "baseline: they predate them).\n")
    return (f"**Baselines on this split**: raw pixels (standardised) val kNN "
            f"{value_range(values('raw_knn_acc'))}, linear probe val "
            f"{value_range(values('raw_probe_acc'))} / test "
            f"{value_range(values('raw_probe_test_acc'))}; random-init encoder val kNN "
            f"{value_range(values(INIT_KEY))} (each trial's own encoder before its first step). "
            "*vs raw pixels* / *vs random init*: the trial's accuracy minus that baseline's "
            "(same split, same kNN k and T, same linear probe), in percentage points; positive: "
            "pretraining helped.\n")


ERROR = "error"  # the status of a trial Ray gave up on (its error file says why)


def result_status(result: Any) -> str:
    """``finished``, ``stopped early``, a failure reason or ``error``: how a Ray ``Result``'s
    trial ended (:func:`sslsearch.space.trial_status`, the one rule for it)."""
    if getattr(result, "error", None) is not None:
        return ERROR
    return trial_status(result.metrics or {}, result.config or {})


def epochs_trained(result: Any) -> int:
    """Epochs a trial trained: its last result's ``epoch``, else (the placeholder result of a
    trial that failed mid-epoch carries none) the last epoch of its progress file."""
    epoch = _number((result.metrics or {}).get("epoch"))
    if epoch is not None:
        return int(epoch)
    try:
        frame = result.metrics_dataframe
        last = frame["epoch"].max() if frame is not None and "epoch" in frame else None
    except Exception:  # no progress file, or no such attribute (a hand-built result)
        last = None
    value = _number(last)
    return int(value) if value is not None else 0


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a search spent, in trial-epochs, against what it would have without early stopping.

    ``planned``: Σ over trials of their configured epochs (trials × epochs), what the search
    would have trained had no trial ended early. ``trained`` + ``saved_by_asha`` +
    ``cut_by_failures`` = ``planned``.
    """

    trials: int
    finished: int
    stopped_early: int
    failed: int  # failure reasons (nan_loss, oom, collapsed) and errors
    trained: int  # Σ epochs actually trained
    planned: int
    saved_by_asha: int  # Σ (configured − trained) over trials stopped early
    cut_by_failures: int  # Σ (configured − trained) over failed trials
    epochs_per_trial: int | None  # the configured epochs when every trial shares them


def budget(results: Any) -> Budget:
    """The budget view of a sweep's results (every trial, errored ones too)."""
    counts = {FINISHED: 0, STOPPED_EARLY: 0, "failed": 0}
    trained = planned = saved = cut = 0
    per_trial: set[int | None] = set()
    for r in results:
        status = result_status(r)
        done = epochs_trained(r)
        # A config that does not say its epochs (hand-built): counted as planned = trained.
        configured = configured_epochs(r.config or {})
        per_trial.add(configured)
        configured = max(done, configured if configured is not None else done)
        counts[status if status in counts else "failed"] += 1
        trained, planned = trained + done, planned + configured
        if status == STOPPED_EARLY:
            saved += configured - done
        elif status != FINISHED:
            cut += configured - done
    return Budget(trials=sum(counts.values()), finished=counts[FINISHED],
                  stopped_early=counts[STOPPED_EARLY], failed=counts["failed"], trained=trained,
                  planned=planned, saved_by_asha=saved, cut_by_failures=cut,
                  epochs_per_trial=next(iter(per_trial)) if len(per_trial) == 1 else None)


def budget_line(b: Budget) -> str:
    """One line: trials by outcome, trial-epochs spent of those planned, what ASHA saved."""
    plan = (f"{b.trials} trials × {b.epochs_per_trial} epochs" if b.epochs_per_trial is not None
            else "Σ configured epochs")
    share = f" ({100.0 * b.saved_by_asha / b.planned:.0f} %)" if b.planned else ""
    cut = f"; failures ended {b.cut_by_failures} earlier" if b.cut_by_failures else ""
    return (f"**Budget**: {b.trials} trials: {b.finished} finished, {b.stopped_early} stopped "
            f"early by ASHA, {b.failed} failed. {b.trained} trial-epochs trained of {b.planned} "
            f"without early stopping ({plan}): ASHA saved {b.saved_by_asha}{share}{cut}.\n")


def summarize(results: Any, metric: str, mode: str) -> tuple[str, list[dict[str, Any]]]:
    """A Markdown table: the best trial of each method, and all trials ranked, each accuracy
    beside its difference to the raw-pixel baseline (and val kNN to the random-init encoder);
    above it the baselines and the budget (:func:`budget_line`)."""
    results = list(results)
    rows = []
    for r in results:
        m = r.metrics or {}
        if metric not in m:
            continue
        cfg = r.config or {}
        method = cfg.get("method", "?")
        params = {k: v for k, v in cfg.items()
                  if not k.startswith("_") and k != "method"}
        rows.append({"trial_id": m.get("trial_id", "?"), "method": method, "params": params,
                     "epochs": int(m.get("epoch", 0)), metric: m.get(metric),
                     "val_knn_acc": m.get("val_knn_acc"),
                     "probe_val_acc": m.get("probe_val_acc"),
                     "probe_test_acc": m.get("probe_test_acc"),
                     "baselines": baselines_of(m),
                     "status": result_status(r),
                     "config": cfg, "path": r.path, "checkpoint": r.checkpoint})
    sign = -1 if mode == "max" else 1

    def key(row: dict[str, Any]) -> tuple[bool, int, float, float]:
        # Selection is on validation: the probe's val accuracy once trained, else the kNN monitor
        # (which also orders trials without a probe: stopped early, or finished with probe: false).
        failed = row["status"] not in (FINISHED, STOPPED_EARLY)
        probe = row["probe_val_acc"]
        value = _number(row[metric])
        return (probe is None, int(failed),
                sign * probe if probe is not None and mode == "max" else 0.0,
                sign * value if value is not None else math.inf)

    rows.sort(key=key)
    lines = ["| method | trial | epochs | status | val kNN | vs raw pixels | vs random init | "
             "probe val | vs raw pixels | probe test | vs raw pixels | parameters |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best_per_method: dict[str, dict[str, Any]] = {}
    for row in rows:
        best_per_method.setdefault(row["method"], row)

    def vs(row: dict[str, Any], acc: str, base: str) -> str:
        if row[acc] is None:  # no probe (stopped early, probe: false): nothing to compare
            return ""
        return fmt_delta(delta_points(row[acc], row["baselines"].get(base)))

    def line(row: dict[str, Any]) -> str:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(row["params"].items()))
        return (f"| {row['method']} | {row['trial_id']} | {row['epochs']} | {row['status']} | "
                f"{_fmt(row[metric])} | {vs(row, 'val_knn_acc', 'raw_knn_acc')} | "
                f"{vs(row, 'val_knn_acc', INIT_KEY)} | {_fmt(row['probe_val_acc'])} | "
                f"{vs(row, 'probe_val_acc', 'raw_probe_acc')} | {_fmt(row['probe_test_acc'])} | "
                f"{vs(row, 'probe_test_acc', 'raw_probe_test_acc')} | {params} |")

    text = [baseline_line(rows), budget_line(budget(results)),
            "## Best trial per method (selected on validation)", "", *lines,
            *(line(r) for r in best_per_method.values()), "", "## All trials", "", *lines,
            *(line(r) for r in rows)]
    return "\n".join(text) + "\n", rows


def _export_best(best: dict[str, Any], out: Path, exp: Experiment) -> Path:
    """The best trial's config as a ready-to-run experiment YAML."""
    from sslsearch.space import trial_from_config

    cfg = dataclasses.asdict(trial_from_config(best["config"]))
    cfg["method_params"] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in cfg["method_params"].items()}
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    # A trial without a linear probe (probe: false) was selected on its val kNN accuracy.
    score = (f"probe val acc {_fmt(best['probe_val_acc'])}"
             if best.get("probe_val_acc") is not None
             else f"val kNN acc {_fmt(best.get('val_knn_acc'))} (no linear probe)")
    doc = {"description": f"Best trial {best['trial_id']} of sweep {out.parent.name}: "
                          f"{score}. Re-run with `python -m sslsearch.train --experiment {out}`.",
           "trial": cfg, "search": dataclasses.asdict(exp.search)}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _main(args, argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if args.compare:
        from sslsearch.compare import run_compare

        return run_compare(args, argv)
    from sslsearch import sweep, tracking
    from sslsearch.space import load_space

    storage = storage_location(args.storage)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    resume_info: dict[str, Any] | None = None
    if args.resume is not None:
        folder = _find_resume_folder(args, storage)
        resume_info = sweep.read_sweep_file(folder)
        if args.space:
            space_path = resolve_file(args.space, SPACES_DIR, "space")
            if sweep.space_digest(space_path.read_text()) != resume_info["space_digest"]:
                raise ConfigError(f"--resume {folder}: that sweep searched "
                                  f"{resume_info['space_path']}, not {space_path} (or the file "
                                  "changed since); drop --space to resume it as it was")
        space_path = Path(resume_info["space_path"])
        exp = load_experiment(resume_info["experiment_path"])
        exp = apply_overrides(exp, argparse.Namespace(
            **{**vars(args), **resume_info["overrides"]}))
        name = folder.name
        storage = str(folder.parent)
        tracking_uri = resume_info["tracking_uri"]
        mlflow_experiment = resume_info["mlflow_experiment"]
    else:
        if not args.space:
            raise ConfigError("--space is required (a file under search_spaces/, e.g. "
                              "--space vicreg.yaml), unless --resume")
        space_path = resolve_file(args.space, SPACES_DIR, "space")
        exp = apply_overrides(load_experiment(args.experiment), args)
        name = args.name or sweep.new_sweep_id(space_path.stem)
        if args.name and "://" not in storage:
            results_folder(args.name, storage)  # a user-given name stays in the results folder
        tracking_uri = tracking.normalize_uri(args.tracking_uri)
        mlflow_experiment = args.mlflow_experiment
    space = load_space(space_path, exp.trial)
    tracking.check_reachable(tracking_uri)
    folder_path = Path(storage) / name if "://" not in storage else None

    overrides = {k: getattr(args, k) for k in ("num_samples", "max_concurrent", "epochs", "seed",
                                                "grace_period",
                                                "cpus_per_trial", "gpus_per_trial", "data_dir")}
    settings = sweep.SweepSettings(name=name, storage=storage, tracking_uri=tracking_uri,
                                   mlflow_experiment=mlflow_experiment, seed=exp.trial.seed,
                                   address=address)
    tracker = tracking.Tracker(tracking_uri, mlflow_experiment, name)
    if resume_info is None:
        info = {"space_path": str(space_path), "space_digest":
                sweep.space_digest(space_path.read_text()), "experiment_path": exp.source,
                "tracking_uri": tracking_uri, "mlflow_experiment": mlflow_experiment,
                "overrides": overrides, "metric": exp.search.metric, "mode": exp.search.mode,
                "cpus_per_trial": exp.search.cpus_per_trial,
                "gpus_per_trial": exp.search.gpus_per_trial, "command": argv}
        tracker.log_sweep(
            params={"space": space_path.name, "experiment": Path(exp.source).name,
                    "num_samples": exp.search.num_samples, "epochs": exp.trial.epochs,
                    "metric": exp.search.metric, "seed": exp.trial.seed},
            tags={**tracking.sweep_tags(), "command": sweep.python_command(argv)},
            texts={"space.yaml": space_path.read_text(),
                   "experiment.yaml": Path(exp.source).read_text(),
                   "command.txt": sweep.python_command([shlex.quote(a) for a in argv]) + "\n"})

    print(f"sweep {name}: space {space_path.name} ({', '.join(space.method_names)}), "
          f"experiment {Path(exp.source).name}, {exp.search.num_samples} trials × "
          f"≤ {exp.trial.epochs} epochs, ≤ {exp.search.max_concurrent} at once", flush=True)
    print(f"  results: {storage}/{name}\n  MLflow:  {tracking_uri}", flush=True)
    t0 = time.time()
    sweep.init_ray(address)
    if resume_info is None:
        tuner = sweep.build_tuner(exp, space, settings, quiet=args.quiet)
        if folder_path is not None:
            sweep.write_sweep_file(folder_path, info)
    else:
        assert folder_path is not None
        tuner = sweep.restore_tuner(folder_path)
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    elapsed = time.time() - t0

    summary, rows = summarize(results, exp.search.metric, exp.search.mode)
    tracker = tracking.Tracker(tracking_uri, mlflow_experiment, name)  # fresh after the fit
    header = (f"# Sweep {name}\n\nspace `{space_path.name}`, experiment "
              f"`{Path(exp.source).name}`, {len(rows)} trials, {elapsed:.0f} s\n\n")
    tracker.log_parent_text(header + summary, "summary.md")
    # The split's raw-pixel baselines on the sweep's run: the callback logged them with the
    # first result that carried them; this catches a sweep whose driver died before it could.
    split: dict[str, float] = {}
    for row in rows:
        for k, v in row["baselines"].items():
            split.setdefault(k, v)
    tracker.log_parent_baselines(split)
    finished = [r for r in rows if r["status"] == "finished"]
    if finished and folder_path is not None:
        best = finished[0]
        best_yaml = _export_best(best, folder_path / "best_experiment.yaml", exp)
        tracker.log_parent_file(best_yaml)
        (folder_path / "summary.md").write_text(header + summary)
        _log_best_encoder(tracker, best, folder_path)
    last_results = {str(r.metrics["trial_id"]): r.metrics for r in results
                    if r.metrics and "trial_id" in r.metrics}
    tracker.end_sweep(last_results, exp.trial.epochs, "FINISHED")
    print()
    print(summary)
    if finished and folder_path is not None:
        print(f"best config: {folder_path / 'best_experiment.yaml'}")
    print(f"MLflow runs: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 "
          f"--port 5000, then open {tracker.runs_link()}")
    print(budget_line(budget(results)).strip().replace("**", ""))
    print(f"done in {elapsed:.0f} s")
    if results and not rows:  # every trial errored: a broken cluster or image is no success
        print(f"error: none of the {len(results)} trials reported a result; see their error "
              "files above", file=sys.stderr)
        return 1
    return 0


def _log_best_encoder(tracker: Any, best: dict[str, Any], folder: Path) -> None:
    """Export the best trial's encoder (safetensors weights + config, see ``sslsearch.export``)
    to ``folder/best_encoder`` and log it to the trial's and the sweep's MLflow runs."""
    from sslsearch.export import export_trial

    out = export_trial(best["config"], best.get("checkpoint"), folder / "best_encoder",
                       extra={"trial_id": best["trial_id"],
                              "probe_val_acc": best["probe_val_acc"],
                              "probe_test_acc": best["probe_test_acc"]})
    if out is None:
        return
    run_id = tracker.child(best["config"].get("_trial_id", best["trial_id"]), "", {})
    for path in sorted(out.iterdir()):
        tracker.log_child_file(run_id, path, "encoder")
        tracker.log_parent_file(path, "best_encoder")
    print(f"best encoder: {out} (load with sslsearch.load_encoder)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
