"""Accuracy against the number of pretraining images, per method (issue 34: i-Mix calls itself a
regulariser for small data; does its gain over N-pair grow as the data shrinks?)::

    python -m sslsearch.sizes --experiment fashion_mnist --methods npair,imix,simclr,byol \\
        --sizes 250,500,1000,2000 --seeds 0,1,2

Each (method, size, seed) is one trial of :func:`sslsearch.train.run` on a seeded, stratified
training subset of ``size`` images (``max_train_samples``), here in turn or in ``--workers``
processes; no Ray, Optuna or MLflow.

**Budget.** ``--budget steps`` (default): the experiment's own run, ``n_ref`` images (its
``max_train_samples``, else the whole training split) for ``epochs`` epochs, makes
``S = (n_ref // batch) × epochs`` steps; ``n`` images train ``ceil(S / (n // batch))`` epochs
(``S`` rounded up to a whole epoch), with the warm-up stretched to the reference's steps
(``warmup_epochs × (n_ref // batch) / (n // batch)``). At equal epochs a small set would also get
fewer updates, mixing less data with less training; ``--budget epochs`` shows that comparison.

**Splits.** A run's ``seed`` is its trial's seed and ``split_seed``: the validation split is drawn
first and the subset after it from one generator (:func:`sslsearch.data.assemble.
train_val_indices`), so for a seed the validation split is the same at every size and the subsets
are nested; the test split is fixed. Seeds vary the subset too (the variance that matters with
little data); the methods of a seed share it. A size below the batch size is refused: the loop
would shrink the batch to it (:class:`sslsearch.train.Schedule`; ``drop_last`` otherwise leaves
the ``n % batch`` images of a reshuffled epoch to others), changing the negatives with the data.
Label-free measures are off: they never change training and would cost small sets every epoch.

``sizes.json`` (rewritten after every run: a rerun skips what it holds), ``sizes.csv``,
``sizes.md`` and ``sizes.png`` (``sizes-epochs.*`` for that budget;
:mod:`sslsearch.reporting.sizes_report`) go to ``--storage`` / ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from sslsearch import methods
from sslsearch.cli import DEFAULT_STORAGE, positive_int, storage_location
from sslsearch.config import (
    DEFAULT_EXPERIMENT,
    Experiment,
    TrialConfig,
    load_experiment,
    trial_config,
)
from sslsearch.errors import ConfigError, OneLineParser, TrialFailure, exit_code
from sslsearch.paths import results_folder
from sslsearch.reporting.sizes_report import (
    RESULTS_JSON,
    read_runs,
    schedule_rows,
    write_report,
    write_runs,
)
from sslsearch.search.sweepdir import is_remote

BUDGETS = ("steps", "epochs")
# What a run's record keeps of the trial's last metrics (sslsearch.results.RAW_VS names the
# raw-pixel counterparts; init_knn_acc is the encoder before its first step).
RECORDED = ("val_knn_acc", "probe_val_acc", "probe_test_acc", "test_knn_acc", "raw_knn_acc",
            "raw_test_knn_acc", "raw_probe_acc", "raw_probe_test_acc", "init_knn_acc",
            "train_loss")


@dataclasses.dataclass(frozen=True)
class Reference:
    """The experiment's own run, whose steps ``--budget steps`` gives every size."""

    size: int
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def size_schedule(steps_per_epoch: int, ref: Reference, budget: str) -> tuple[int, float]:
    """(epochs, warm-up epochs) of a run whose size gives ``steps_per_epoch``: the module's rule
    (equal steps rounded up to a whole epoch, warm-up of equal steps; or the reference's)."""
    if budget == "epochs":
        return ref.epochs, ref.warmup_epochs
    epochs = math.ceil(ref.steps / steps_per_epoch)
    return epochs, min(ref.warmup_epochs * ref.steps_per_epoch / steps_per_epoch, epochs)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One (method, size, seed) run and the trial it runs."""

    method: str
    size: int
    seed: int
    budget: str
    steps_per_epoch: int
    cfg: TrialConfig

    @property
    def key(self) -> tuple[str, int, int, str]:
        return self.method, self.size, self.seed, self.budget

    def header(self) -> dict[str, Any]:
        """The record's first fields: what ran, and for how long."""
        return {"method": self.method, "size": self.size, "seed": self.seed,
                "budget": self.budget, "epochs": self.cfg.epochs,
                "steps": self.cfg.epochs * self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "warmup_epochs": self.cfg.warmup_epochs, "batch_size": self.cfg.batch_size}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything checked before the first run."""

    exp: Experiment
    budget: str
    reference: Reference
    specs: tuple[RunSpec, ...]
    folder: Path
    workers: int

    @property
    def results(self) -> Path:
        return self.folder / RESULTS_JSON

    def identity(self) -> dict[str, Any]:
        """What the runs in one ``sizes.json`` must share: the experiment's settings (its name
        and its trial fields, not its file's bytes: a comment changes nothing)."""
        doc = {"experiment": Path(self.exp.source).name,
               "trial": dataclasses.asdict(self.exp.trial), "methods": dict(self.exp.methods)}
        return dict(json.loads(json.dumps(doc)))


def parse_list(text: str, flag: str, kind: type) -> tuple[Any, ...]:
    """``a,b,c`` as a tuple of ``kind``; empty, malformed or repeated items are bad input."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} {text!r}: empty; give a comma-separated list")
    try:
        values = tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated {kind.__name__}s") from None
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"{flag} {text!r}: {', '.join(repeated)} repeated")
    return values


def training_split_size(cfg: TrialConfig) -> int:
    """Images in the whole training split (validation held out) of ``cfg``'s data."""
    from sslsearch.trial.trial import load_data, select_device

    whole = dataclasses.replace(cfg, max_train_samples=None)
    return len(load_data(whole, select_device(cfg.device)).train)


def check_sizes(sizes: Sequence[int], n_train: int, batch: int) -> None:
    """Sizes the training split can give, none below a batch (the module's docstring: why)."""
    for size in sizes:
        if size <= 0 or size > n_train:
            raise ConfigError(f"--sizes {size}: out of range; the training split holds "
                              f"{n_train:,} images (1 ≤ size ≤ {n_train})")
        if size < batch:
            raise ConfigError(f"--sizes {size}: below the experiment's batch size {batch}; the "
                              "loop would shrink the batch to the subset, changing the method's "
                              f"negatives with the data: give sizes ≥ {batch}")


def steps_per_epoch(cfg: TrialConfig, n: int) -> int:
    """The loop's own steps an epoch on ``n`` images (:class:`sslsearch.train.Schedule`)."""
    from sslsearch.parts.distributed import ONE_PROCESS
    from sslsearch.train import Schedule

    return Schedule.of(cfg, n, ONE_PROCESS).steps_per_epoch


def run_specs(exp: Experiment, names: Sequence[str], sizes: Sequence[int], seeds: Sequence[int],
              budget: str, ref: Reference) -> tuple[RunSpec, ...]:
    """The runs, seed by seed and size by size, the methods innermost: the methods of one size
    and seed share one loaded subset (the data cache) and one random-init probe."""
    specs = []
    for seed in seeds:
        for size in sizes:
            per = steps_per_epoch(exp.trial, size)
            epochs, warmup = size_schedule(per, ref, budget)
            for name in names:
                cfg = trial_config({"max_train_samples": size, "epochs": epochs, "seed": seed,
                                    "warmup_epochs": warmup, "split_seed": seed,
                                    "label_free": False}, source="sizes",
                                   base=exp.trial_for(name))
                specs.append(RunSpec(name, size, seed, budget, per, cfg))
    return tuple(specs)


def output_folder(storage: str, name: str) -> Path:
    """``storage / name``, made and checked writable (a results folder: never outside it)."""
    if is_remote(storage):
        raise ConfigError(f"--storage {storage}: sizes writes a local folder; give a local path")
    folder = results_folder(name, storage_location(storage), "--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {name!r}: cannot write to {folder} ({exc.strerror})") from None
    return folder


def build_plan(args: argparse.Namespace) -> Plan:
    exp = load_experiment(args.experiment)
    names = parse_list(args.methods, "--methods", str)
    unknown = [m for m in names if m not in methods.available()]
    if unknown:
        raise ConfigError(f"--methods: {', '.join(unknown)} unknown; known: "
                          f"{', '.join(methods.available())}")
    sizes = tuple(sorted(parse_list(args.sizes, "--sizes", int)))
    seeds = parse_list(args.seeds, "--seeds", int)
    if min(seeds) < 0:
        raise ConfigError(f"--seeds {args.seeds!r}: seeds are integers ≥ 0")
    if not exp.trial.labels or not exp.trial.probe:
        raise ConfigError(f"{exp.source}: the curves are accuracies: the experiment needs labels "
                          "and the probe (labels: true, probe: true)")
    n_train = training_split_size(exp.trial)
    check_sizes(sizes, n_train, exp.trial.batch_size)
    n_ref = min(exp.trial.max_train_samples or n_train, n_train)
    ref = Reference(n_ref, steps_per_epoch(exp.trial, n_ref), exp.trial.epochs,
                    exp.trial.warmup_epochs)
    folder = output_folder(args.storage, args.out or f"sizes-{Path(exp.source).stem}")
    return Plan(exp, args.budget, ref, run_specs(exp, names, sizes, seeds, args.budget, ref),
                folder, args.workers)


# ------------------------------------------------------------------------------------------------
# The runs and their file.


INIT_PROBES: dict[tuple[Any, ...], dict[str, float]] = {}


def init_probe(cfg: TrialConfig) -> dict[str, float]:
    """The linear probe of the untrained encoder on the run's split, the random-init baseline of
    the test probe (the trial reports it for the kNN only). The backbone is drawn right after
    ``torch.manual_seed(cfg.seed)``, before the method's heads (:func:`setup_trial`), so it is
    the same for every method (a test checks): one probe per split and seed in a process."""
    from sslsearch.trial.trial import load_data, probe, select_device, setup_trial

    key = (cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.split_seed, cfg.max_train_samples,
           cfg.image_size, cfg.seed, cfg.backbone, cfg.backbone_width, cfg.probe_max_iter,
           cfg.precision)
    if key not in INIT_PROBES:
        device = select_device(cfg.device)
        trial = setup_trial(cfg, load_data(cfg, device), device, compile=False)
        got = probe(trial)
        INIT_PROBES[key] = {"init_probe_val_acc": got["probe_val_acc"],
                            "init_probe_test_acc": got["probe_test_acc"]}
    return INIT_PROBES[key]


def run_one(spec: RunSpec) -> dict[str, Any]:
    """One run's record: the trial's last metrics and the random-init probe of its split; a
    trial that fails (non-finite loss, collapse) is recorded as such, not retried on resume."""
    from sslsearch import train

    t0 = time.perf_counter()
    try:
        metrics = train.run(spec.cfg)
    except TrialFailure as exc:
        return {**spec.header(), "failure": exc.reason, "seconds": time.perf_counter() - t0}
    kept = {k: float(metrics[k]) for k in RECORDED if k in metrics}
    return {**spec.header(), **kept, **init_probe(spec.cfg), "failure": None,
            "seconds": time.perf_counter() - t0}


def share_cores(workers: int) -> None:
    """A pool worker's torch threads: its share of the cores, so workers do not oversubscribe."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def records(todo: Sequence[RunSpec], workers: int) -> Iterator[dict[str, Any]]:
    """The runs' records as they finish: here in turn, or in a pool of ``workers`` processes
    (spawned: torch's threads do not survive a fork). On Ctrl+C or an error the pool's queued
    runs are cancelled (a plain ``with`` would run them all before returning)."""
    if workers == 1:
        for spec in todo:
            yield run_one(spec)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=share_cores, initargs=(workers,))
    try:
        for future in as_completed([pool.submit(run_one, spec) for spec in todo]):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_all(plan: Plan) -> list[dict[str, Any]]:
    runs = read_runs(plan.results, plan.identity())
    done = {(r["method"], r["size"], r["seed"], r["budget"]) for r in runs}
    todo = [s for s in plan.specs if s.key not in done]
    print(f"{len(plan.specs) - len(todo)} of {len(plan.specs)} runs already in {plan.results}; "
          f"{len(todo)} to run", flush=True)
    for i, record in enumerate(records(todo, plan.workers), 1):
        runs.append(record)
        write_runs(plan.results, plan.identity(), runs)
        print(f"[{i}/{len(todo)}] {run_line(record)}", flush=True)
    return runs


# ------------------------------------------------------------------------------------------------
# The command.


def run_line(r: dict[str, Any]) -> str:
    what = f"{r['method']:>8} size {r['size']:>6,} seed {r['seed']}"
    if r.get("failure"):
        return f"{what}: failed ({r['failure']})"
    return (f"{what}: val kNN {r['val_knn_acc']:.3f} (raw {r['raw_knn_acc']:.3f}, init "
            f"{r['init_knn_acc']:.3f})  test probe {r['probe_test_acc']:.3f} (raw "
            f"{r['raw_probe_test_acc']:.3f}, init {r['init_probe_test_acc']:.3f})  "
            f"{r['epochs']} epochs, {r['steps']} steps, {r['seconds']:.0f} s")


def schedule_lines(plan: Plan) -> list[str]:
    ref, batch = plan.reference, plan.exp.trial.batch_size
    rule = (f"equal steps: {ref.steps} (the experiment's {ref.size:,} images × {ref.epochs} "
            f"epochs of batch {batch}), rounded up to whole epochs" if plan.budget == "steps"
            else f"equal epochs: {ref.epochs} at every size, batch {batch}")
    return [f"budget: {rule}", "    size  epochs  steps/epoch  steps  warm-up epochs",
            *(f"  {size:>6,}  {epochs:>6}  {per:>11}  {steps:>5}  {warmup:>14.2f}" for
              size, epochs, per, steps, warmup in schedule_rows([s.header() for s in plan.specs]))]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sslsearch.sizes",
                   description="Accuracy against the number of pretraining images, per method: "
                               "one pretrain-then-probe trial per method, size and seed.")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="YAML",
                   help=f"experiment: a path, or a name under experiments/; default: "
                        f"{DEFAULT_EXPERIMENT}")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. npair,imix")
    p.add_argument("--sizes", required=True,
                   help="comma-separated training-subset sizes, e.g. 250,500,1000,2000")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; default: 0,1,2")
    p.add_argument("--budget", choices=BUDGETS, default="steps",
                   help="equal optimisation steps (the experiment's) or equal epochs at every "
                        "size; default: steps")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="runs at once, each in its own process; default: 1")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="FOLDER",
                   help=f"the results folder; default: {DEFAULT_STORAGE}")
    p.add_argument("--out", metavar="NAME",
                   help="a folder name under --storage; default: sizes-<experiment>")
    return p


def run_command(argv: Sequence[str] | None) -> int:
    plan = build_plan(build_parser().parse_args(argv))
    print(f"sizes: {', '.join(dict.fromkeys(s.method for s in plan.specs))} on "
          f"{Path(plan.exp.source).name}, {len(plan.specs)} runs → {plan.folder}", flush=True)
    print("\n".join(schedule_lines(plan)), flush=True)
    runs = run_all(plan)
    paths = write_report(plan.folder, [r for r in runs if r["budget"] == plan.budget],
                         plan.budget)
    print("wrote " + ", ".join(str(p) for p in (plan.results, *paths)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return exit_code(lambda: run_command(argv))


if __name__ == "__main__":
    sys.exit(main())
