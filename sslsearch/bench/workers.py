"""``python -m sslsearch.bench workers``: a trial's pretraining throughput at 1 and N data-parallel
workers (``--workers-per-trial``), in images per second of the global batch.

Each configuration ``NxT`` (N workers of T intra-op threads each) runs in N fresh processes
joined by a local gloo group (no Ray: the processes Ray Train would start, without its start-up),
each running the training loop's own pieces: its shard of every global batch, both views
augmented for the whole batch and cut to its rows, :func:`sslsearch.trial.trial.train_step`
(gradients averaged over the workers, BatchNorm over the global batch). The default compares one
worker on one thread and on every core with the cores split among two workers. After ``--warmup``
untimed steps, ``--steps`` timed steps; the time is the slowest worker's (they wait for each other
at every collective anyway). ``--rounds`` rounds alternate the configurations; the report gives each
one's median and its ratio to the fastest one-worker configuration.

On one CPU, N workers do the same arithmetic as one on N times fewer threads, plus the
collectives (a gather per BatchNorm layer and per gathered loss input, an all-reduce of the
gradients): expect a ratio at or below 1. Workers pay off when each has its own device (GPUs,
or nodes), which this benchmark does not measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch.config import load_experiment, trial_config
from sslsearch.errors import OneLineParser, exit_code
from sslsearch.methods.base import Step
from sslsearch.parts.distributed import ProcessGroup, spawn
from sslsearch.train import Schedule
from sslsearch.trial.trial import (
    LiveTrial,
    augment_configs,
    load_data,
    setup_trial,
    train_batches,
    train_step,
    trial_optimizer,
    two_views,
)


def default_configs() -> str:
    """``1x1,1x<cores>,2x<cores/2>``: one worker on one thread and on every core, two workers
    sharing the cores."""
    import os

    cores = os.cpu_count() or 1
    return ",".join(dict.fromkeys(["1x1", f"1x{cores}", f"2x{max(1, cores // 2)}"]))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sslsearch.bench workers",
                      description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--experiment", default="quick",
                   help="experiment YAML: the trial's data, model and batch (default: %(default)s)")
    p.add_argument("--method", default="simclr", help="SSL method (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch (default: the experiment's)")
    p.add_argument("--configs", default=default_configs(),
                   help="WORKERSxTHREADS configurations to compare, comma-separated, threads per "
                        "worker (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds alternating the worker counts (default: %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    return p


def measure(group: ProcessGroup, settings: dict[str, Any], out: str) -> None:
    """Time ``settings["steps"]`` steps as ``group``'s worker; rank 0 writes images/s to ``out``."""
    torch.set_num_threads(settings["threads"])
    exp = load_experiment(settings["experiment"])
    changes: dict[str, Any] = {"method": settings["method"], "method_params": {},
                               "device": "cpu", "probe": False, "label_free": False}
    if settings["batch_size"] is not None:
        changes["batch_size"] = settings["batch_size"]
    cfg = trial_config(changes, base=exp.trial)
    data = load_data(cfg, torch.device("cpu"))
    trial = setup_trial(cfg, data, torch.device("cpu"), group=group)
    plan = Schedule.of(cfg, len(data.train), group)
    optimizer = trial_optimizer(trial, plan.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    augs = augment_configs(cfg, data.image_size, trial.method)
    batches = _endless(trial, gen, plan.batch_size)
    t0 = 0.0
    for i in range(settings["warmup"] + settings["steps"]):
        if i == settings["warmup"]:
            t0 = time.perf_counter()
        x, y = next(batches)
        x1, x2 = two_views(trial, x, augs, gen, plan.rows)
        y = y if plan.rows is None else y[plan.rows]
        train_step(trial, optimizer, x1, x2, y, Step(i, 10**9, 0, plan.steps_per_epoch))
    seconds = group.maximum(time.perf_counter() - t0)  # the slowest worker's
    if group.is_main:
        Path(out).write_text(json.dumps({
            "images_per_second": settings["steps"] * plan.batch_size / seconds,
            "batch_size": plan.batch_size}))


def _endless(trial: LiveTrial, gen: torch.Generator, batch_size: int
             ) -> Iterator[tuple[Tensor, Tensor]]:
    """Global batches, epoch after epoch."""
    while True:
        yield from train_batches(trial, gen, batch_size)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    configs = [c.strip() for c in args.configs.split(",")]
    settings = {k: getattr(args, k) for k in ("experiment", "method", "batch_size", "warmup",
                                              "steps")}
    seen: dict[str, list[float]] = {c: [] for c in configs}
    batch: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for c in configs:
                workers, threads = (int(v) for v in c.split("x"))
                out = Path(folder) / f"{r}-{c}.json"
                spawn(measure, workers, {**settings, "threads": threads}, str(out))
                got = json.loads(out.read_text())
                seen[c].append(got["images_per_second"])
                batch[c] = got["batch_size"]
                print(f"  .. round {r + 1}: {c} {seen[c][-1]:.0f} images/s", file=sys.stderr,
                      flush=True)
    medians = {c: statistics.median(v) for c, v in seen.items()}
    # The fastest one-worker configuration (none given: the first).
    base = max([m for c, m in medians.items() if c.startswith("1x")] or [medians[configs[0]]])
    return {"settings": settings, "date": time.strftime("%Y-%m-%d"), "configs": {
        c: {"images_per_second": medians[c], "rounds": seen[c], "ratio": medians[c] / base,
            "batch_size": batch[c]} for c in configs}}


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    rounds = len(next(iter(result["configs"].values()))["rounds"])
    lines = [f"{s['method']} on {s['experiment']} ({result['date']}), {s['steps']} timed steps, "
             f"median of {rounds} rounds; ratio to the fastest one-worker configuration:"]
    for c, r in result["configs"].items():
        workers, threads = c.split("x")
        lines.append(f"  {workers} worker(s) × {threads} thread(s): "
                     f"{r['images_per_second']:.0f} images/s (global batch {r['batch_size']}), "
                     f"{r['ratio']:.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return exit_code(lambda: _main(build_parser().parse_args(argv)))


def _main(args: argparse.Namespace) -> int:
    result = run(args)
    print(report(result), flush=True)
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
