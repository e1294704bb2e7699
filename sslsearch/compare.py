"""Which method wins? A fair, tuned comparison of every method of a search space.

    python -m sslsearch.run --space all_methods.yaml --compare --methods simclr,byol,vicreg,barlow

1. **Equal search budgets.** Each method gets its own search with the same number of trials
   (``--num-samples``, per method), the same epochs, the same seeded TPE and the same ASHA
   schedule: the method is fixed, its own and the shared parameters are searched.
2. **Selection on validation only, confirmed on fresh seeds.** Each method's search is ranked by
   the one selection rule (:data:`sslsearch.results.SELECTION`: the search's metric, finished
   trials first); its top ``--confirm-top`` configurations and the method's defaults are re-run
   with ``--confirm-seeds`` fresh seeds, the same seeds for every method (so differences between
   methods are paired), and the method's winner is the best mean of the search's metric over
   them (:mod:`sslsearch.search.confirm`). The test split plays no part in any choice.
3. **Seeds.** The table reports mean ± sample std (ddof 1) over the winner's fresh-seed runs of
   the linear-probe **test** accuracy, the test kNN accuracy and the validation kNN accuracy,
   and the compute each method spent (trial-seconds and epochs, search and confirmation apart).
4. **Baselines.** Beside each accuracy: the same measure on the standardised raw pixels of the
   same split (``raw_probe_test_acc``, ``raw_test_knn_acc``, ``raw_knn_acc``; one value per split,
   carried from the trials' results) and the difference "vs raw pixels" in points; beside the
   val kNN accuracy also the random-init encoder's (``init_knn_acc``, mean ± std over the seed
   runs: each seed initialises its own encoder) and the difference "vs random init".

Writes ``comparison.md``, ``comparison.json``, the report (``report.md`` + PNG plots, see
:mod:`sslsearch.reporting.report`), one encoder export per method (``encoders/<method>``) and the
overall best (``best_encoder``) into the comparison's folder, and logs them all to its parent MLflow
run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from pathlib import Path
from typing import Any

from sslsearch.cli import Overrides, storage_location
from sslsearch.config import SPACES_DIR, Experiment, load_experiment
from sslsearch.errors import ConfigError
from sslsearch.paths import results_folder
from sslsearch.reporting import provenance
from sslsearch.reporting.compare_table import (
    agreement_markdown,
    comparison_markdown,
    method_agreement,
    method_rows,
)
from sslsearch.reporting.confirm_report import markdown as confirm_markdown
from sslsearch.reporting.summary import correlation_markdown
from sslsearch.results import RAW_KEYS, SELECTION, TrialRecord, record
from sslsearch.schema import resolve_file
from sslsearch.search.confirm import Choice, Confirmation, choose, fresh_seeds
from sslsearch.search.outbox import OUTBOX_FILE
from sslsearch.search.space import trial_keys
from sslsearch.search.sweepdir import is_remote
from sslsearch.search.tracking_uri import check_reachable, normalize_uri

# ------------------------------------------------------------------------------------------------
# The command


@dataclasses.dataclass
class Comparison:
    """One ``--compare`` run: what it compares, where it writes, where it logs."""

    name: str
    folder: Path
    space_path: Path
    space: Any  # sslsearch.search.space.SearchSpace
    exp: Experiment
    methods: list[str]
    seeds: list[int]
    tracking_uri: str
    mlflow_experiment: str
    command: str
    address: str | None
    quiet: bool

    @property
    def outbox(self) -> Path:  # the tracking outbox of all its sweeps (sslsearch.search.outbox)
        return self.folder / OUTBOX_FILE


@dataclasses.dataclass
class Outcome:
    """What the comparison found: each method's search, its selected trial and its seed runs."""

    search: dict[str, list[TrialRecord]] = dataclasses.field(default_factory=dict)
    seed_runs: dict[str, list[TrialRecord]] = dataclasses.field(default_factory=dict)  # winner's
    best: dict[str, TrialRecord | None] = dataclasses.field(default_factory=dict)  # its trial
    choices: dict[str, Choice | None] = dataclasses.field(default_factory=dict)
    confirmations: dict[str, Confirmation | None] = dataclasses.field(default_factory=dict)
    last_results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def all_trials(self) -> list[TrialRecord]:
        """The searches' trials and the winners' confirmation runs."""
        return [t for runs in (*self.search.values(), *self.seed_runs.values()) for t in runs]


def run_compare(args: argparse.Namespace, argv: list[str]) -> int:
    """``python -m sslsearch.run --compare``: see the module docstring."""
    from sslsearch.search import sweep

    c = _plan(args, argv)
    sweep.start_ray(c.exp.search, c.address)
    sweep.check_resources(c.exp.search, c.address)  # before the comparison's MLflow run exists
    _log_start(c)
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
    from sslsearch.search import preflight, sweep
    from sslsearch.search.space import load_space

    if args.resume is not None:
        raise ConfigError("--compare cannot be resumed; start it again (each method's search "
                          "is a separate Ray experiment under the comparison's folder)")
    if not args.space:
        raise ConfigError("--compare needs --space (e.g. --space all_methods.yaml)")
    space_path = resolve_file(args.space, SPACES_DIR, "space")
    exp = Overrides.from_args(args).apply(load_experiment(args.experiment))
    if not exp.search.confirm:
        raise ConfigError("--compare confirms each method's top configurations on fresh seeds "
                          "and compares those: drop --no-confirm (search.confirm: false)")
    space = load_space(space_path, exp.trial, exp.methods)
    methods = list(space.method_names)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in methods]
        if unknown:
            raise ConfigError(f"--methods: {', '.join(unknown)} not in {space_path.name} "
                              f"(it draws: {', '.join(methods)})")
        methods = wanted
    storage = storage_location(args.storage)
    if is_remote(storage):
        raise ConfigError("--compare writes its report to a local folder: give a local --storage")
    name = args.name or sweep.new_sweep_id(f"compare-{space_path.stem}")
    folder = results_folder(name, storage)  # a user-given name stays in the results folder
    tracking_uri = normalize_uri(args.tracking_uri)
    check_reachable(tracking_uri)
    preflight.check_sweep(exp, space, storage, name, tracking_uri, make_folder=True,
                          methods=methods)
    return Comparison(
        name=name, folder=folder, space_path=space_path, space=space, exp=exp, methods=methods,
        seeds=fresh_seeds({exp.trial.seed}, exp.search.confirm_seeds), tracking_uri=tracking_uri,
        mlflow_experiment=args.mlflow_experiment,
        command=sweep.python_command([shlex.quote(a) for a in argv]),
        address=args.address or None,  # None: $RAY_ADDRESS, else a fresh local Ray
        quiet=args.quiet)


def _log_start(c: Comparison) -> None:
    from sslsearch.search import preflight, tracking

    exp, checked = c.exp, preflight.recorded(c.folder)  # the images it left out, if any
    tracking.Tracker(c.tracking_uri, c.mlflow_experiment, c.name).log_sweep(
        params={**checked.params, "space": c.space_path.name, "experiment": Path(exp.source).name,
                "num_samples_per_method": exp.search.num_samples, "epochs": exp.trial.epochs,
                "metric": exp.search.metric, "seed": exp.trial.seed, "compare": True,
                "methods": ",".join(c.methods), "seeds": ",".join(map(str, c.seeds))},
        tags={**provenance.sweep_tags(), "command": c.command, "sslsearch.kind": "compare"},
        texts={**checked.texts, "space.yaml": c.space_path.read_text(),
               "experiment.yaml": Path(exp.source).read_text(), "command.txt": c.command + "\n"})
    print(f"comparison {c.name}: {', '.join(c.methods)}; {exp.search.num_samples} search trials "
          f"× ≤ {exp.trial.epochs} epochs per method, then {len(c.seeds)} seeds each\n"
          f"  results: {c.folder}\n  MLflow:  {c.tracking_uri}", flush=True)


def _compare_one(c: Comparison, method: str, outcome: Outcome) -> None:
    """One method: its search, its top configurations confirmed on the comparison's fresh seeds
    (the same for every method), the winner (:func:`sslsearch.search.confirm.choose`)."""
    from sslsearch.search import sweep
    from sslsearch.search.reruns import Target, confirm_search

    keys = trial_keys(c.space)
    search = c.exp.search
    print(f"\n== {method}: search ({search.num_samples} trials)", flush=True)
    settings = sweep.SweepSettings(name=c.name, storage=str(c.folder / f"search-{method}"),
                                   tracking_uri=c.tracking_uri,
                                   mlflow_experiment=c.mlflow_experiment, seed=c.exp.trial.seed,
                                   address=c.address, outbox=str(c.outbox))
    # Each method's search starts from its defaults (unless the space names its own first
    # points): the confirmed answer may then be what the method ships with, never a worse draw.
    space = c.space.only(method, from_defaults=True)
    results = sweep.fit_all(sweep.build_tuner(c.exp, space, settings, quiet=c.quiet))
    trials = outcome.search[method] = [record(r, "search", keys) for r in results]
    target = Target(storage=str(c.folder), run_name=f"confirm-{method}", sweep_name=c.name,
                    tracking_uri=c.tracking_uri, mlflow_experiment=c.mlflow_experiment,
                    outbox=c.outbox, quiet=c.quiet)
    conf, runs = confirm_search(trials, space, c.exp, target, keys)
    choice = outcome.choices[method] = choose(trials, search.metric, search.mode, conf)
    outcome.confirmations[method] = conf
    outcome.best[method] = next((t for t in trials if choice and t.trial_id == choice.trial_id),
                                None)
    outcome.seed_runs[method] = list(conf.winner.runs) if conf and conf.winner else []
    print(f"== {method}: {choice.how if choice else 'no usable trial'}", flush=True)
    for r in [*results, *runs]:
        if r.metrics and "trial_id" in r.metrics:
            outcome.last_results[str(r.metrics["trial_id"])] = r.metrics


def _write_outputs(c: Comparison, outcome: Outcome, elapsed: float
                   ) -> tuple[str, str | None, str]:
    """comparison.md/.json, the encoders and the report, logged to the parent run; returns the
    Markdown, the method whose encoder is the overall best (None if none was exported) and the
    MLflow link to the runs."""
    from sslsearch.reporting import report
    from sslsearch.search import tracking

    outbox = tracking.sweep_outbox(c.outbox, c.tracking_uri, c.mlflow_experiment, c.name)
    for t in outcome.all_trials():  # once; a no-op when the callbacks logged them
        outbox.send("log_parent_baselines", {k: t.metrics[k] for k in RAW_KEYS & t.metrics.keys()})
    exp = c.exp
    rows = method_rows(outcome.search, outcome.seed_runs, outcome.best, exp.search.metric,
                       exp.search.mode)
    info = {"name": c.name, "command": c.command, "space": c.space_path.name,
            "experiment": Path(exp.source).name, "dataset": exp.trial.dataset,
            "backbone": exp.trial.backbone, "epochs": exp.trial.epochs,
            "num_samples": exp.search.num_samples, "search_seed": exp.trial.seed,
            "metric": exp.search.metric, "labels": exp.trial.labels, "seeds": c.seeds,
            "n_seeds": len(c.seeds), "confirm_top": exp.search.top_k,
            "methods": c.methods, "selection": SELECTION, "wall_seconds": elapsed}
    correlations = correlation_markdown([(t.method, t.metrics) for t in outcome.all_trials()
                                         if t.stage == "search"])
    confirmed = "".join(f"\n# {method}\n\n{confirm_markdown(conf, exp.trial.seed)}"
                        for method, conf in outcome.confirmations.items() if conf is not None)
    agreement = method_agreement(rows) if exp.trial.labels else []
    agreement_md = agreement_markdown(agreement)
    md = (comparison_markdown(info, rows) + (f"\n{agreement_md}" if agreement_md else "")
          + (f"\n{correlations}" if correlations else "") + confirmed)
    doc = {**info, "rows": rows, "trials": [t.to_json() for t in outcome.all_trials()],
           "label_free_agreement": agreement}
    (c.folder / "comparison.md").write_text(md)
    (c.folder / "comparison.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    outbox.send("log_parent_file", str(c.folder / "comparison.md"))
    outbox.send("log_parent_file", str(c.folder / "comparison.json"))
    winner = _export_encoders(c, outcome.choices, outbox)
    written = report.write_report(
        c.folder, md, outcome.all_trials(), outcome.best, c.space,
        winner_encoder=None if winner is None else c.folder / "best_encoder", winner=winner,
        metric=exp.search.metric)
    for path in written:
        outbox.send("log_parent_file", str(path), "report")
    outbox.send("end_sweep", outcome.last_results, exp.trial.epochs, "FINISHED")
    outbox.close(str(c.folder))
    return md, winner, outbox.runs_link()


def _export_encoders(c: Comparison, choices: dict[str, Choice | None], outbox: Any
                     ) -> str | None:
    """Each method's answer's encoder (its confirmed winner's run nearest the mean), and the
    method whose answer has the best confirmed mean as ``best_encoder``."""
    import shutil

    from sslsearch.reporting.export import export_trial, read_config

    exports: dict[str, Path] = {}
    for method, choice in choices.items():
        if choice is None:
            continue
        origin = provenance.encoder_provenance(choice, c.name, c.exp.search.metric)
        out = export_trial(choice.run.config, choice.run.checkpoint,
                           c.folder / "encoders" / method, provenance=origin)
        if out is not None:
            exports[method] = out
            for path in sorted(out.iterdir()):
                outbox.send("log_parent_file", str(path), f"encoders/{method}")
    sign = 1.0 if c.exp.search.mode == "max" else -1.0
    ranked = sorted((m for m, ch in choices.items() if ch is not None and m in exports
                     and ch.value is not None),
                    key=lambda m: -sign * (choices[m].value or 0.0))  # type: ignore[union-attr]
    if not ranked:
        return None
    winner = ranked[0]
    best = c.folder / "best_encoder"
    shutil.copytree(exports[winner], best, dirs_exist_ok=True)
    for path in sorted(best.iterdir()):
        outbox.send("log_parent_file", str(path), "best_encoder")
    outbox.send("log_parent_model", str(best), "best_encoder", read_config(best)["provenance"])
    return winner
