"""One trial in plain PyTorch: pretrain an encoder with an SSL method, then probe its features.

This module knows nothing of Ray, Optuna or MLflow (a test checks that importing it loads none of
them): it runs on a GPU machine that has only torch, and calls ``report(metrics, checkpoint_dir)``
after every epoch so that any driver can observe, checkpoint and stop it.

Debug one trial::

    python -m sslsearch.train --experiment quick --method vicreg --epochs 5
"""

from __future__ import annotations

import argparse
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
from sslsearch.baselines import INIT_KEY, RAW_KEYS
from sslsearch.checkpoint import load_checkpoint, save_checkpoint
from sslsearch.config import TrialConfig, load_experiment, trial_config
from sslsearch.data import DataBundle
from sslsearch.errors import ConfigError, TrialFailure, exit_code
from sslsearch.methods.base import Step
from sslsearch.optim import lr_at, scaled_lr, set_lr
from sslsearch.results import delta_points, fmt_delta
from sslsearch.trial import (
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


def _check_memory(cfg: TrialConfig, epoch: int) -> None:
    if cfg.max_host_memory_gb is not None:
        used = host_memory_gb()
        if used > cfg.max_host_memory_gb:
            raise TrialFailure("oom", f"host memory {used:.2f} GiB > max_host_memory_gb "
                                      f"{cfg.max_host_memory_gb} at epoch {epoch}")


def run(cfg: TrialConfig, report: ReportFn | None = None,
        checkpoint_dir: str | Path | None = None, *, data: DataBundle | None = None,
        stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Pretrain with ``cfg.method`` for ``cfg.epochs`` epochs, then linear-probe the backbone.

    After every epoch a checkpoint is written to ``checkpoint_dir`` (when given) and
    ``report(metrics, checkpoint_dir)`` is called; the last epoch's metrics include the probe's.
    If ``checkpoint_dir`` holds a checkpoint, training resumes from it and continues exactly as an
    uninterrupted run would. Raises :class:`TrialFailure` on a non-finite loss or out-of-memory.
    Returns the last epoch's metrics.
    """
    device = select_device(cfg.device)
    data = data if data is not None else load_data(cfg, device)
    trial = setup_trial(cfg, data, device)
    method = trial.method

    batch_size = min(cfg.batch_size, len(data.train))
    steps_per_epoch = len(data.train) // batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = scaled_lr(cfg.base_lr, batch_size)
    optimizer = trial_optimizer(trial, batch_size)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # batches and augmentations
    augs = augment_configs(cfg, data.image_size, method)

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch = 0
    state = load_checkpoint(folder) if folder is not None else None
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch = int(state["epoch"])

    metrics: dict[str, float] = dict(state.get("last_metrics", {})) if state else {}
    # Baselines: the random-init kNN only exists before the first step (a resumed trial keeps the
    # value its checkpoint recorded); the raw-pixel numbers come from the per-process cache.
    baselines = trial_baselines(trial) if INIT_KEY not in metrics else {
        k: metrics[k] for k in (INIT_KEY, *RAW_KEYS) if k in metrics}
    method.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums: dict[str, Tensor] = {}
        for i, (x, y) in enumerate(train_batches(trial, gen, batch_size)):
            step = Step(epoch * steps_per_epoch + i, total_steps, epoch, steps_per_epoch)
            set_lr(optimizer, lr_at(step.step, total_steps=total_steps, warmup_steps=warmup_steps,
                                    peak_lr=peak_lr, final_lr=peak_lr * cfg.final_lr_ratio))
            x1, x2 = two_views(trial, x, augs, gen)
            try:
                out = train_step(trial, optimizer, x1, x2, y, step)
            except torch.cuda.OutOfMemoryError as exc:
                raise TrialFailure("oom", f"out of GPU memory at epoch {epoch}: {exc}") from None
            for k, v in out.items():  # accumulated on the device: no host sync per step
                sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float()
            if (i + 1) % cfg.check_finite_every == 0:
                if not torch.isfinite(sums["loss"]):
                    raise TrialFailure("nan_loss", f"non-finite loss at epoch {epoch}, step {i}")
                _check_memory(cfg, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        epoch_metrics = {f"train_{k}" if k != "loss" else "train_loss": float(v / steps_per_epoch)
                         for k, v in sums.items()}
        if not math.isfinite(epoch_metrics["train_loss"]):
            raise TrialFailure("nan_loss", f"non-finite loss at epoch {epoch}")
        _check_memory(cfg, epoch)
        try:
            evals = evaluate_epoch(trial, gen, augs)
        except torch.cuda.OutOfMemoryError as exc:
            raise TrialFailure("oom",
                               f"out of GPU memory evaluating epoch {epoch}: {exc}") from None
        metrics = {
            "epoch": float(epoch + 1),
            **epoch_metrics,
            **{k: float(v) for k, v in evals.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": train_seconds,
            "images_per_second": steps_per_epoch * batch_size / train_seconds,
            **baselines,
        }
        if epoch + 1 == cfg.epochs and cfg.probe and trial.labeled:
            metrics.update(probe(trial))
        elif epoch + 1 == cfg.epochs and cfg.probe and cfg.probe_data_dir is not None:
            metrics.update(probe_on_labeled_folder(trial, cfg.probe_data_dir))
        if folder is not None:
            ckpt: dict[str, Any] = {
                "epoch": epoch + 1,
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "last_metrics": metrics,
            }
            if device.type == "cuda":
                ckpt["cuda_rng"] = torch.cuda.get_rng_state(device)
            save_checkpoint(folder, ckpt)
        if report is not None:
            report(metrics, folder)
        if stop is not None and stop():
            break
    return metrics


# ------------------------------------------------------------------------------------------------
# Debugging entry point: one trial, one line per epoch.


def _parse_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value as YAML reads it (``0.1``, ``true``, ``[64, 64]``)."""
    from sslsearch.schema import parse_yaml

    return parse_yaml(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return exit_code(lambda: _run_one(args), failures=(TrialFailure,))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sslsearch.train",
        description="Run one pretrain-then-probe trial and print one line per epoch.")
    parser.add_argument("--experiment", default="quick",
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
    if "method" in overrides and overrides["method"] != exp.trial.method:
        overrides.setdefault("method_params", {})  # another method: drop the old one's params
    if params:
        base_params = overrides.get("method_params", exp.trial.method_params)
        overrides["method_params"] = {**base_params, **params}
    return trial_config(overrides, source="command line", base=exp.trial)


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
