"""The main command: a hyperparameter search over SSL methods.

    python -m sslsearch.run --space vicreg.yaml

Ray Tune runs the trials (``sslsearch.train`` inside ``sslsearch.search.trainable``), Optuna's TPE
proposes them, ASHA stops poor ones early, and every trial is a child run of the sweep's parent run
in MLflow. ``--resume`` continues an interrupted sweep. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sslsearch import console
from sslsearch.cli import Overrides, build_parser, find_resume_folder, storage_location
from sslsearch.compare import run_compare
from sslsearch.config import SPACES_DIR, Experiment, load_experiment
from sslsearch.errors import ConfigError, exit_code
from sslsearch.paths import check_owned, results_folder
from sslsearch.reporting import provenance
from sslsearch.reporting.summary import summarize
from sslsearch.results import budget, budget_line, record
from sslsearch.schema import resolve_file
from sslsearch.search import sweepdir
from sslsearch.search.confirm import Choice, choose, parent_record
from sslsearch.search.space import load_space, trial_from_config, trial_keys
from sslsearch.search.tracking_uri import check_reachable, normalize_uri


@dataclasses.dataclass
class Plan:
    """One sweep, new or resumed: where it lives, what it searches, where it logs."""

    name: str
    storage: str
    space_path: Path
    exp: Experiment
    tracking_uri: str
    mlflow_experiment: str
    resumed: bool

    @property
    def folder(self) -> Path | None:
        """The sweep's local folder (None on remote storage such as s3://)."""
        return Path(self.storage) / self.name if "://" not in self.storage else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return exit_code(lambda: _main(build_parser().parse_args(argv), argv),
                         interrupted="interrupted: resume with --resume")
    finally:
        sweepdir.release_all()


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    console.quiet_libraries()
    if args.sync_tracking is not None:
        return sync_tracking(args.sync_tracking, storage_location(args.storage))
    if args.compare:
        return run_compare(args, argv)
    from sslsearch.search import (  # torch and Ray: once the flags are read
        preflight,
        sweep,
        tracking,
    )

    plan = _resumed_plan(args) if args.resume is not None else _new_plan(args)
    # every file checked before Ray starts
    space = load_space(plan.space_path, plan.exp.trial, plan.exp.methods)
    check_reachable(plan.tracking_uri)
    checked = preflight.check_sweep(plan.exp, space, plan.storage, plan.name, plan.tracking_uri)
    sweepdir.lock(plan.folder, plan.name)  # a second driver on this sweep exits 2
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    sweep.start_ray(plan.exp.search, args.address or None)  # checks the address first
    sweep.check_resources(plan.exp.search, address)  # before the sweep's MLflow run exists
    if not plan.resumed:
        _log_new_sweep(plan, args, argv, checked)
    exp = plan.exp
    print(f"sweep {plan.name}: space {plan.space_path.name} ({', '.join(space.method_names)}), "
          f"experiment {Path(exp.source).name}, {exp.search.num_samples} trials × "
          f"≤ {exp.trial.epochs} epochs, ≤ {exp.search.max_concurrent} at once", flush=True)
    print(f"  results: {plan.storage}/{plan.name}\n  MLflow:  {plan.tracking_uri}", flush=True)
    t0 = time.time()
    if plan.resumed and plan.folder is not None and sweep.has_tune_state(plan.folder):
        tuner = sweep.restore_tuner(plan.folder)
    else:  # new, or killed before Tune first saved its state: nothing to restore, start over
        if plan.resumed and plan.folder is not None:  # its first start's trials are orphans
            sweepdir.start_over(plan.folder, plan.name, lambda: tracking.Tracker(
                plan.tracking_uri, plan.mlflow_experiment, plan.name).forget_trials())
        tuner = sweep.build_tuner(exp, space, _settings(plan, address), quiet=args.quiet)
        if plan.folder is not None and not plan.resumed:  # a restart keeps the first record
            sweep.write_sweep_file(plan.folder, _sweep_record(plan, args, argv))
    results = sweep.fit_all(tuner)  # Ctrl+C: "interrupted: resume with --resume"
    confirmation, confirm_results = None, list[Any]()
    if exp.search.confirm:
        confirmation, confirm_results = _confirm(plan, space, results, args.quiet)
    return _report(plan, results, confirmation, confirm_results, time.time() - t0)


def _resumed_plan(args: argparse.Namespace) -> Plan:
    """The plan of an interrupted sweep, from its sweep file (its flags, not today's)."""
    from sslsearch.search import sweep

    folder = find_resume_folder(args, storage_location(args.storage))
    info = sweep.read_sweep_file(folder)
    if args.space:
        space_path = resolve_file(args.space, SPACES_DIR, "space")
        if sweep.space_digest(space_path.read_text()) != info["space_digest"]:
            raise ConfigError(f"--resume {folder}: that sweep searched {info['space_path']}, not "
                              f"{space_path} (or the file changed since); drop --space to resume "
                              "it as it was")
    saved = Overrides.saved(info["overrides"], str(folder / sweep.SWEEP_FILE))
    exp = saved.apply(load_experiment(info["experiment_path"]))
    for flag, key, started in (("--confirm-top", "confirm_top", exp.search.top_k),
                               ("--confirm-seeds", "confirm_seeds", exp.search.confirm_seeds),
                               ("--no-confirm", "confirm", exp.search.confirm)):
        given = getattr(args, key)
        if given is not None and given != started:
            shown = "" if key == "confirm" else f" {given}"
            raise ConfigError(f"{flag}{shown}: sweep {folder.name} was started with "
                              f"search.{key} = {started}; drop the flag to resume it as it was")
    return Plan(name=folder.name, storage=str(folder.parent), space_path=Path(info["space_path"]),
                exp=exp, tracking_uri=info["tracking_uri"],
                mlflow_experiment=info["mlflow_experiment"], resumed=True)


def _new_plan(args: argparse.Namespace) -> Plan:
    from sslsearch.search import sweep

    if not args.space:
        raise ConfigError("--space is required (a file under search_spaces/, e.g. "
                          "--space vicreg.yaml), unless --resume")
    storage = storage_location(args.storage)
    space_path = resolve_file(args.space, SPACES_DIR, "space")
    exp = Overrides.from_args(args).apply(load_experiment(args.experiment))
    if args.name and "://" not in storage:
        results_folder(args.name, storage)  # a user-given name stays in the results folder
    return Plan(name=args.name or sweep.new_sweep_id(space_path.stem), storage=storage,
                space_path=space_path, exp=exp,
                tracking_uri=normalize_uri(args.tracking_uri),
                mlflow_experiment=args.mlflow_experiment, resumed=False)


def _settings(plan: Plan, address: str | None) -> Any:
    from sslsearch.search import sweep

    return sweep.SweepSettings(name=plan.name, storage=plan.storage,
                               tracking_uri=plan.tracking_uri,
                               mlflow_experiment=plan.mlflow_experiment, seed=plan.exp.trial.seed,
                               address=address)


def _sweep_record(plan: Plan, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """What ``--resume`` needs to continue the sweep as it was started (its sweep file)."""
    from sslsearch.search import sweep

    exp = plan.exp
    return {"space_path": str(plan.space_path),
            "space_digest": sweep.space_digest(plan.space_path.read_text()),
            "experiment_path": exp.source, "tracking_uri": plan.tracking_uri,
            "mlflow_experiment": plan.mlflow_experiment,
            "overrides": dataclasses.asdict(Overrides.from_args(args)),
            "metric": exp.search.metric, "mode": exp.search.mode,
            "cpus_per_trial": exp.search.cpus_per_trial,
            "gpus_per_trial": exp.search.gpus_per_trial,
            "workers_per_trial": exp.search.workers_per_trial, "command": argv}


def _log_new_sweep(plan: Plan, args: argparse.Namespace, argv: list[str],
                   checked: Any) -> None:
    """The sweep's parent run in MLflow: its parameters, tags and input files (and the bad
    images the pre-flight left out)."""
    from sslsearch.search import sweep, tracking

    exp = plan.exp
    tracker = tracking.Tracker(plan.tracking_uri, plan.mlflow_experiment, plan.name)
    tracker.log_sweep(
        params={"space": plan.space_path.name, "experiment": Path(exp.source).name,
                "num_samples": exp.search.num_samples, "epochs": exp.trial.epochs,
                "metric": exp.search.metric, "seed": exp.trial.seed, **checked.params},
        tags={**provenance.sweep_tags(), "command": sweep.python_command(argv)},
        texts={"space.yaml": plan.space_path.read_text(),
               "experiment.yaml": Path(exp.source).read_text(),
               "command.txt": sweep.python_command([shlex.quote(a) for a in argv]) + "\n",
               **checked.texts})


def _confirm(plan: Plan, space: Any, results: list[Any], quiet: bool) -> tuple[Any, list[Any]]:
    """The search's top configurations on fresh seeds
    (:func:`sslsearch.search.reruns.confirm_search`), in the sweep's folder (``confirm/``), resumed
    after a kill like the search."""
    from sslsearch.search.reruns import CONFIRM_RUN, Target, confirm_search

    keys = trial_keys(space)
    target = Target(storage=f"{plan.storage}/{plan.name}", run_name=CONFIRM_RUN,
                    sweep_name=plan.name, tracking_uri=plan.tracking_uri,
                    mlflow_experiment=plan.mlflow_experiment,
                    outbox=_settings(plan, None).outbox_file, quiet=quiet, record=plan.folder)
    return confirm_search([record(r, "search", keys) for r in results], space, plan.exp, target,
                          keys)


def _report(plan: Plan, results: list[Any], confirmation: Any, confirm_results: list[Any],
            elapsed: float) -> int:
    """The summary (MLflow, summary.md, the terminal), the answer (:func:`sslsearch.search.confirm.
    choose`) exported as ``best_experiment.yaml`` and ``best_encoder/``, and recorded on the
    sweep's MLflow run."""
    exp, folder = plan.exp, plan.folder
    metric = exp.search.metric
    summary, rows = summarize(results, metric, exp.search.mode, confirmation)
    choice = choose([r["record"] for r in rows], metric, exp.search.mode, confirmation)
    outbox = _outbox(plan)
    header = (f"# Sweep {plan.name}\n\nspace `{plan.space_path.name}`, experiment "
              f"`{Path(exp.source).name}`, {len(rows)} trials, {elapsed:.0f} s\n\n")
    outbox.send("log_parent_text", header + summary, "summary.md")
    # The split's raw-pixel baselines on the sweep's run: the callback logged them with the
    # first result that carried them; this catches a sweep whose driver died before it could.
    split: dict[str, float] = {}
    for row in rows:
        for k, v in row["baselines"].items():
            split.setdefault(k, v)
    outbox.send("log_parent_baselines", split)
    outbox.send("log_parent_selection", *parent_record(choice, confirmation, metric))
    if choice is not None and folder is not None:
        best_file = export_best(choice, folder / "best_experiment.yaml", exp)
        outbox.send("log_parent_file", str(best_file))
        (folder / "summary.md").write_text(header + summary)
        _log_best_encoder(outbox, choice, folder, plan.name, metric)
    last_results = {str(r.metrics["trial_id"]): r.metrics for r in [*results, *confirm_results]
                    if r.metrics and "trial_id" in r.metrics}
    outbox.send("end_sweep", last_results, exp.trial.epochs, "FINISHED")
    outbox.close(plan.name if plan.folder is not None else str(outbox.path))
    print(f"\n{summary}")
    if choice is not None and folder is not None:
        print(f"best config: {folder / 'best_experiment.yaml'} ({choice.how})")
    print(f"MLflow runs: mlflow ui --backend-store-uri {plan.tracking_uri} --host 127.0.0.1 "
          f"--port 5000, then open {outbox.runs_link()}")
    print(budget_line(budget(results)).strip().replace("**", ""))
    print(f"done in {elapsed:.0f} s")
    if results and not rows:  # every trial errored: a broken cluster or image is no success
        print(f"error: none of the {len(results)} trials reported a result; see their error "
              "files above", file=sys.stderr)
        return 1
    return 0


def sync_tracking(given: str, storage: str) -> int:
    """``--sync-tracking NAME``: replay a sweep's tracking outbox (what it could not log while
    the MLflow server was away) to the server it names; exit 0 when it has all gone through, 1
    when the server is still unreachable (the records stay for another try)."""
    from sslsearch.search import tracking
    from sslsearch.search.outbox import OUTBOX_FILE, read_target

    path = Path(given).expanduser()
    if path.is_dir():
        path = path / OUTBOX_FILE
    elif not path.is_file():
        if sweepdir.is_remote(storage):
            raise ConfigError("--sync-tracking with a remote --storage needs the outbox's path")
        path = results_folder(given, storage, "--sync-tracking") / OUTBOX_FILE
    if not path.is_file():
        print(f"--sync-tracking {given}: nothing to replay (no {path})")
        return 0
    check_owned(path, f"--sync-tracking {given}", "replay")
    target = read_target(path)
    outbox = tracking.sweep_outbox(path, target["uri"], target["experiment"], target["sweep_id"])
    count = outbox.pending
    if outbox.flush():
        print(f"--sync-tracking {given}: {count} records replayed to {target['uri']}")
        return 0
    print(f"--sync-tracking {given}: {target['uri']} still unreachable; {outbox.pending} records "
          f"kept in {path}", file=sys.stderr)
    return 1


def export_best(choice: Choice, out: Path, exp: Experiment) -> Path:
    """The answer's configuration as a ready-to-run experiment YAML."""
    cfg = dataclasses.asdict(trial_from_config(choice.config))
    cfg["method_params"] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in cfg["method_params"].items()}
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    doc = {"description": f"Sweep {out.parent.name}: {choice.how}. Re-run with `python -m "
                          f"sslsearch.train --experiment {out}` (--seed S for another seed).",
           "trial": cfg, "search": dataclasses.asdict(exp.search)}
    out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return out


def _outbox(plan: Plan) -> Any:
    """The sweep's tracking outbox (:mod:`sslsearch.search.outbox`), the callback's file."""
    from sslsearch.search import tracking

    return tracking.sweep_outbox(_settings(plan, None).outbox_file, plan.tracking_uri,
                                 plan.mlflow_experiment, plan.name)


def _log_best_encoder(outbox: Any, choice: Choice, folder: Path, sweep_id: str,
                      metric: str) -> None:
    """Export the answer's encoder (safetensors weights + config, see
    ``sslsearch.reporting.export``) to ``folder/best_encoder`` with its provenance, log it to
    its run's and the sweep's MLflow runs, and make it the sweep's logged model."""
    from sslsearch.reporting.export import export_trial, read_config

    run = choice.run
    out = export_trial(run.config, run.checkpoint, folder / "best_encoder",
                       provenance=provenance.encoder_provenance(choice, sweep_id, metric))
    if out is None:
        return
    for path in sorted(out.iterdir()):
        outbox.send("trial_file", run.trial_id, str(path), "encoder")
        outbox.send("log_parent_file", str(path), "best_encoder")
    outbox.send("log_parent_model", str(out), "best_encoder", read_config(out)["provenance"])
    print(f"best encoder: {out} (load with sslsearch.load_encoder)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
