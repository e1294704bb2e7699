"""One trial in plain PyTorch: pretrain an encoder with an SSL method, then probe its features.

This module knows nothing of Ray, Optuna or MLflow (a test checks that importing it loads none of
them): it runs on a GPU machine that has only torch, and calls ``report(metrics, checkpoint_dir)``
after every epoch so that any driver can observe, checkpoint and stop it.

Debug one trial::

    python -m sslsearch.train --experiment quick --method vicreg --epochs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch import methods
from sslsearch.config import DEFAULT_EXPERIMENT, TrialConfig, load_experiment, trial_config
from sslsearch.data import DataBundle
from sslsearch.errors import ConfigError, OneLineParser, TrialFailure, exit_code
from sslsearch.methods.base import Step
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup
from sslsearch.parts.optim import lr_at, scaled_lr, set_lr
from sslsearch.results import delta_points, fmt_delta
from sslsearch.trial.augment import AugmentConfig
from sslsearch.trial.baselines import INIT_KEY, RAW_KEYS
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint
from sslsearch.trial.trial import (
    LiveTrial,
    augment_configs,
    evaluate_epoch,
    load_data,
    probe,
    probe_on_labeled_folder,
    select_device,
    setup_trial,
    train_batches,
    train_step,
    trial_baselines,
    trial_optimizer,
    two_views,
)

ReportFn = Callable[[dict[str, float], Path | None], None]


def host_memory_gb() -> float:
    """Resident memory of this process in GiB (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _check_memory(cfg: TrialConfig, epoch: int, group: ProcessGroup) -> None:
    if cfg.max_host_memory_gb is not None:
        used = group.maximum(host_memory_gb())  # the fullest worker: every rank stops together
        if used > cfg.max_host_memory_gb:
            raise TrialFailure("oom", f"host memory {used:.2f} GiB > max_host_memory_gb "
                                      f"{cfg.max_host_memory_gb} at epoch {epoch}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The loop's sizes: the GLOBAL batch (every worker together; the learning rate follows it),
    this worker's rows of it, and the steps."""

    batch_size: int  # global: cfg.batch_size capped by the data, a multiple of the workers
    rows: slice | None  # this worker's rows of each global batch; None: all (one process)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float

    @classmethod
    def of(cls, cfg: TrialConfig, n_train: int, group: ProcessGroup) -> Schedule:
        # Several workers: each takes an equal share, so the global batch is rounded down to a
        # multiple of their number (one process: unchanged).
        batch = min(cfg.batch_size, n_train)
        batch -= batch % group.world_size
        if batch < 2 * group.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} on {n_train} training samples: too "
                              f"small for {group.world_size} workers of at least 2 rows each")
        per = batch // group.world_size
        rows = None if group.world_size == 1 else slice(group.rank * per, (group.rank + 1) * per)
        steps = n_train // batch
        return cls(batch, rows, steps, steps * cfg.epochs, round(cfg.warmup_epochs * steps),
                   scaled_lr(cfg.base_lr, batch, cfg.optimizer, cfg.lr_scaling))


def run(cfg: TrialConfig, report: ReportFn | None = None,
        checkpoint_dir: str | Path | None = None, *, data: DataBundle | None = None,
        stop: Callable[[], bool] | None = None,
        group: ProcessGroup = ONE_PROCESS) -> dict[str, float]:
    """Pretrain with ``cfg.method`` for ``cfg.epochs`` epochs, then linear-probe the backbone.

    After every epoch a checkpoint is written to ``checkpoint_dir`` (when given) and
    ``report(metrics, checkpoint_dir)`` is called; the last epoch's metrics include the probe's.
    If ``checkpoint_dir`` holds a checkpoint, training resumes from it and continues exactly as an
    uninterrupted run would. Raises :class:`TrialFailure` on a non-finite loss or out-of-memory.
    Returns the last epoch's metrics.

    ``group``: the trial's workers (:mod:`sslsearch.parts.distributed`), each running this function
    on its shard of every global batch; rank 0 alone evaluates, probes and writes the checkpoint,
    and every rank gets its metrics (``report(metrics, None)`` on the others). Every rank stops
    together, with the same :class:`TrialFailure`.
    """
    device = select_device(cfg.device)
    data = data if data is not None else load_data(cfg, device)
    trial = setup_trial(cfg, data, device, group=group)
    plan = Schedule.of(cfg, len(data.train), group)
    optimizer = trial_optimizer(trial, plan.batch_size)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # batches and augmentations
    augs = augment_configs(cfg, data.image_size, trial.method)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, metrics = _resume(trial, optimizer, gen, folder)
    # Baselines: the random-init kNN only exists before the first step (a resumed trial keeps the
    # value its checkpoint recorded); the raw-pixel numbers come from the per-process cache.
    baselines = _on_main(trial, gen, lambda: trial_baselines(trial)) if INIT_KEY not in metrics \
        else {k: metrics[k] for k in (INIT_KEY, *RAW_KEYS) if k in metrics}
    trial.method.train()
    for epoch in range(start_epoch, cfg.epochs):
        trained = _train_epoch(trial, optimizer, gen, augs, plan, epoch)
        metrics = _on_main(trial, gen, functools.partial(
            _close_epoch, trial, optimizer, gen, augs, folder, {**trained, **baselines}))
        if report is not None:
            report(metrics, folder if group.is_main else None)
        if stop is not None and group.any(stop()):
            break
    return metrics


def _resume(trial: LiveTrial, optimizer: torch.optim.Optimizer, gen: torch.Generator,
            folder: Path | None) -> tuple[int, dict[str, float]]:
    """The epoch to start from and the last metrics, from the checkpoint in ``folder`` (every
    worker reads its own copy of the same checkpoint)."""
    state = load_checkpoint(folder) if folder is not None else None
    if state is None:
        return 0, {}
    trial.method.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if trial.device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], trial.device)
    return int(state["epoch"]), dict(state.get("last_metrics", {}))


def _train_epoch(trial: LiveTrial, optimizer: torch.optim.Optimizer, gen: torch.Generator,
                 augs: tuple[AugmentConfig, AugmentConfig], plan: Schedule, epoch: int
                 ) -> dict[str, float]:
    """One epoch of steps on this worker's rows of every global batch; the epoch's mean loss
    terms (over the workers too), its seconds and images per second (global batch)."""
    cfg, group = trial.cfg, trial.group
    t0 = time.perf_counter()
    sums: dict[str, Tensor] = {}
    for i, (x, y) in enumerate(train_batches(trial, gen, plan.batch_size)):
        step = Step(epoch * plan.steps_per_epoch + i, plan.total_steps, epoch,
                    plan.steps_per_epoch)
        set_lr(optimizer, lr_at(step.step, total_steps=plan.total_steps,
                                warmup_steps=plan.warmup_steps, peak_lr=plan.peak_lr,
                                final_lr=plan.peak_lr * cfg.final_lr_ratio))
        x1, x2 = two_views(trial, x, augs, gen, plan.rows)
        y = y if plan.rows is None else y[plan.rows]
        try:
            out = train_step(trial, optimizer, x1, x2, y, step)
        except torch.cuda.OutOfMemoryError as exc:
            if group.world_size > 1:  # this worker's alone: the others wait in a collective,
                raise  # so it is a worker error, which ends the whole group (Ray Train)
            raise TrialFailure("oom", f"out of GPU memory at epoch {epoch}: {exc}") from None
        for k, v in out.items():  # accumulated on the device: no host sync per step
            sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
        if (i + 1) % cfg.check_finite_every == 0:
            if group.any(not bool(torch.isfinite(sums["loss"]))):
                raise TrialFailure("nan_loss", f"non-finite loss at epoch {epoch}, step {i}")
            _check_memory(cfg, epoch, group)
    if trial.device.type == "cuda":
        torch.cuda.synchronize(trial.device)
    seconds = time.perf_counter() - t0
    means = {f"train_{k}" if k != "loss" else "train_loss":
             float(group.mean(v) / plan.steps_per_epoch) for k, v in sums.items()}
    if not math.isfinite(means["train_loss"]):
        raise TrialFailure("nan_loss", f"non-finite loss at epoch {epoch}")
    _check_memory(cfg, epoch, group)
    return {"epoch": float(epoch + 1), **means, "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_second": plan.steps_per_epoch * plan.batch_size / seconds}


def _close_epoch(trial: LiveTrial, optimizer: torch.optim.Optimizer, gen: torch.Generator,
                 augs: tuple[AugmentConfig, AugmentConfig], folder: Path | None,
                 trained: dict[str, float]) -> dict[str, float]:
    """The epoch's metrics (kNN, collapse, label-free; the probe after the last epoch) and its
    checkpoint: rank 0's work (:func:`_on_main`)."""
    cfg, epoch = trial.cfg, int(trained["epoch"]) - 1
    try:
        evals = evaluate_epoch(trial, gen, augs)
    except torch.cuda.OutOfMemoryError as exc:
        raise TrialFailure("oom", f"out of GPU memory evaluating epoch {epoch}: {exc}") from None
    metrics = {"epoch": trained["epoch"],
               **{k: v for k, v in trained.items() if k.startswith("train_")},
               **{k: float(v) for k, v in evals.items()},
               **{k: v for k, v in trained.items() if k != "epoch" and not k.startswith("train_")}}
    if epoch + 1 == cfg.epochs and cfg.probe and trial.labeled:
        metrics.update(probe(trial))
    elif epoch + 1 == cfg.epochs and cfg.probe and cfg.probe_data_dir is not None:
        metrics.update(probe_on_labeled_folder(trial, cfg.probe_data_dir))
    if folder is not None:
        ckpt: dict[str, Any] = {
            "epoch": epoch + 1,
            "model": trial.method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "last_metrics": metrics,
        }
        if trial.device.type == "cuda":
            ckpt["cuda_rng"] = torch.cuda.get_rng_state(trial.device)
        save_checkpoint(folder, ckpt)
    return metrics


def _on_main(trial: LiveTrial, gen: torch.Generator, fn: Callable[[], dict[str, float]]
             ) -> dict[str, float]:
    """``fn()`` on rank 0 alone (evaluation, baselines, probe, checkpoint: once, not once per
    worker), its result on every rank, or the :class:`TrialFailure` it raised raised on every
    rank; then rank 0's random states on every rank, since the evaluation draws from them (one
    process: ``fn()``)."""
    group = trial.group
    if group.world_size == 1:
        return fn()
    result: dict[str, float] | None = None
    failure: tuple[str, str] | None = None
    if group.is_main:
        try:
            result = fn()
        except TrialFailure as exc:
            failure = (exc.reason, str(exc))
    result, failure = group.broadcast_object((result, failure))
    group.sync_random_state(gen)
    if failure is not None:
        raise TrialFailure(*failure)
    assert result is not None
    return result


# ------------------------------------------------------------------------------------------------
# Debugging entry point: one trial, one line per epoch.


def _parse_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value as YAML reads it (``0.1``, ``true``, ``[64, 64]``)."""
    from sslsearch.schema import parse_yaml

    return parse_yaml(text)


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: _run_one(_parser().parse_args(argv)), failures=(TrialFailure,))


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m sslsearch.train",
        description="Run one pretrain-then-probe trial and print one line per epoch.")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help="experiment YAML (a path, or a name under experiments/; "
                             "default: %(default)s)")
    parser.add_argument("--method", help="SSL method (default: the experiment's); one of: "
                        + ", ".join(methods.available()))
    parser.add_argument("--epochs", type=int, help="pretraining epochs (default: the experiment's)")
    parser.add_argument("--dataset", help="dataset name (default: the experiment's)")
    parser.add_argument("--data-dir", help="dataset folder (default: the experiment's)")
    parser.add_argument("--seed", type=int, help="random seed (default: the experiment's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a trial field, e.g. --set batch_size=128 or "
                             "--set method_params.temperature=0.1 (repeatable)")
    parser.add_argument("--checkpoint-dir", help="write checkpoints here and resume from them")
    return parser


def _trial_from_args(args: argparse.Namespace) -> TrialConfig:
    """The experiment's trial with the flags and ``--set KEY=VALUE`` overrides applied."""
    exp = load_experiment(args.experiment)
    overrides: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        if key.startswith("method_params."):
            params[key.removeprefix("method_params.")] = _parse_value(value)
        else:
            overrides[key] = _parse_value(value)
    for flag in ("method", "epochs", "dataset", "seed"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    base = exp.trial_for(overrides.get("method", exp.trial.method))  # its methods: block too
    if params:
        overrides["method_params"] = {**base.method_params, **params}
    return trial_config(overrides, source="command line", base=base)


def _vs(m: dict[str, float], acc: str, raw: str, init: str | None = None) -> str:
    """``0.794 (raw 0.790, +0.4; init 0.747)``: an accuracy, the raw-pixel baseline's and the
    difference in points, and the random-init encoder's (when given and known)."""
    notes = []
    if raw in m:
        notes.append(f"raw {m[raw]:.3f}, {fmt_delta(delta_points(m[acc], m[raw]))}")
    if init is not None and init in m:
        notes.append(f"init {m[init]:.3f}")
    return f"{m[acc]:.3f} ({'; '.join(notes)})" if notes else f"{m[acc]:.3f}"


def _show(m: dict[str, float], _: Path | None) -> None:
    """One line per epoch (the probe's accuracies on the last)."""
    probe = (f"  probe val {_vs(m, 'probe_val_acc', 'raw_probe_acc')} test "
             f"{_vs(m, 'probe_test_acc', 'raw_probe_test_acc')}" if "probe_val_acc" in m else "")
    print(f"epoch {int(m['epoch']):3d}  loss {m['train_loss']:.4f}  "
          f"val_knn {_vs(m, 'val_knn_acc', 'raw_knn_acc', 'init_knn_acc')}  "
          f"std×√d {m['embed_std_ratio']:.2f}  rank {m['effective_rank']:.1f}  "
          f"{m['epoch_seconds']:.2f}s  {m['images_per_second']:.0f} img/s{probe}", flush=True)


def _run_one(args: argparse.Namespace) -> int:
    cfg = _trial_from_args(args)
    print(f"{cfg.method} on {cfg.dataset} ({cfg.backbone}), {cfg.epochs} epochs, "
          f"device {select_device(cfg.device)}", flush=True)
    run(cfg, report=_show, checkpoint_dir=args.checkpoint_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
