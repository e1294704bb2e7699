"""One trial in plain PyTorch: pretrain an encoder with an SSL method, then probe its features.

This module knows nothing of Ray, Optuna or MLflow (a test checks that importing it loads none of
them): it runs on a GPU machine that has only torch, and calls ``report(metrics, checkpoint_dir)``
after every epoch so that any driver can observe, checkpoint and stop it.

Debug one trial::

    python -m sslsearch.train --experiment quick --method vicreg --epochs 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch import methods
from sslsearch.augment import AugmentConfig, Augmenter, normalize
from sslsearch.baselines import INIT_KEY, RAW_KEYS, raw_pixel_baseline
from sslsearch.config import TrialConfig, load_experiment, trial_config
from sslsearch.data import DataBundle, load_dataset_cached
from sslsearch.errors import ConfigError, TrialFailure
from sslsearch.evaluate import accuracy, collapse_diagnostics, extract, knn_predict, linear_probe
from sslsearch.methods.base import Method, Step, Task
from sslsearch.networks import build_backbone, frozen, set_requires_grad
from sslsearch.optim import build_optimizer, lr_at, scaled_lr, set_lr

ReportFn = Callable[[dict[str, float], Path | None], None]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


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


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; "
                          "use auto or cpu")
    return torch.device(name)


def load_data(cfg: TrialConfig, device: torch.device) -> DataBundle:
    return load_dataset_cached(
        cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, val_fraction=cfg.val_fraction,
        seed=cfg.split_seed, device=device, max_train_samples=cfg.max_train_samples,
        image_size=cfg.image_size)


def build_method(cfg: TrialConfig, data: DataBundle) -> Method:
    """The method object (backbone + heads + state) for ``cfg`` on ``data``."""
    if data.kind == "tabular" and cfg.backbone != "mlp":
        raise ConfigError(f"dataset {cfg.dataset!r} is tabular: backbone must be mlp, "
                          f"found {cfg.backbone!r}")
    if data.kind == "image" and cfg.backbone == "mlp":
        raise ConfigError(f"dataset {cfg.dataset!r} holds images: backbone must be one of "
                          "small_cnn, resnet18, resnet34, resnet50")
    backbone = build_backbone(cfg.backbone, in_channels=data.in_channels,
                              image_size=data.image_size, width=cfg.backbone_width)
    module = methods.get(cfg.method)
    method_cfg = methods.method_config(cfg.method, cfg.method_params)
    method: Method = module.Method(method_cfg, backbone, Task(data.kind, data.num_classes))
    return method


def augment_configs(cfg: TrialConfig, image_size: int) -> tuple[AugmentConfig, AugmentConfig]:
    """The two views' augmentations (solarisation, when on, applies to the second view only)."""
    overrides: dict[str, Any] = {"jitter_strength": cfg.jitter_strength, "flip_p": cfg.flip_p,
                                 "grayscale_p": cfg.grayscale_p}
    if cfg.crop_min_scale is not None:
        overrides["crop_min_scale"] = cfg.crop_min_scale
    if cfg.blur_p is not None:
        overrides["blur_p"] = cfg.blur_p
    first = AugmentConfig.for_image_size(image_size, **overrides)
    return first, dataclasses.replace(first, solarize_p=cfg.solarize_p)


# ------------------------------------------------------------------------------------------------
# Checkpoints: a dict of tensors and plain values, written atomically, read with weights_only.


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``folder/checkpoint.pt`` atomically, keeping the previous one.

    A crash mid-write leaves a ``.tmp`` file and the old checkpoints intact.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    if (folder / CHECKPOINT).exists():
        os.replace(folder / CHECKPOINT, folder / PREVIOUS)
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (falling back to the previous one), or None."""
    for name in (CHECKPOINT, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            return state
        except Exception:
            continue
    return None


# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Trial:
    """The live objects of a trial (kept together so evaluation helpers stay small)."""

    cfg: TrialConfig
    data: DataBundle
    device: torch.device
    method: Method
    eval_batch: int
    augmenters: dict[AugmentConfig, Augmenter] = dataclasses.field(default_factory=dict)

    def augmenter(self, aug: AugmentConfig) -> Augmenter:
        """The (compiled, with ``cfg.compile``) augmentation for ``aug``, built once."""
        if aug not in self.augmenters:
            self.augmenters[aug] = Augmenter(aug, mean=self.data.mean, std=self.data.std,
                                             compile=self.cfg.compile)
        return self.augmenters[aug]

    def inputs(self, x: Tensor) -> Tensor:
        """Evaluation input: uint8 images normalised (no augmentation); tabular rows as they are."""
        if self.data.kind == "tabular":
            return x
        x = normalize(x, self.data.mean, self.data.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def features(self, split: Any) -> tuple[Tensor, Tensor]:
        """Backbone features of a whole split, in large batches, under inference mode."""
        backbone = self.method.backbone
        with self._autocast():
            return extract(lambda x: backbone(self.inputs(x)),
                           split.iter_batches(self.eval_batch, None, shuffle=False,
                                              drop_last=False))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast per ``cfg.precision`` (weights, optimiser state and losses stay fp32)."""
        precision = self.cfg.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _views(trial: _Trial, x: Tensor, augs: tuple[AugmentConfig, AugmentConfig],
           gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if trial.data.kind == "tabular":
        return x, x  # seed 001: tabular data gets no augmentation, only mixing (i-Mix)
    x1 = trial.augmenter(augs[0])(x, gen)
    x2 = trial.augmenter(augs[1])(x, gen)
    if trial.device.type == "cuda":
        x1 = x1.contiguous(memory_format=torch.channels_last)
        x2 = x2.contiguous(memory_format=torch.channels_last)
    return x1, x2


@torch.inference_mode()
def _knn_acc(trial: _Trial) -> Tensor:
    """Validation kNN accuracy of the backbone's features (bank: the training split)."""
    train_f, train_y = trial.features(trial.data.train)
    val_f, val_y = trial.features(trial.data.val)
    pred = knn_predict(train_f, train_y, val_f, trial.data.num_classes, k=trial.cfg.knn_k,
                       temperature=trial.cfg.knn_t)
    return accuracy(pred, val_y)


def _baselines(trial: _Trial) -> dict[str, float]:
    """What the trial's accuracies are compared with: its encoder at random initialisation (call
    before the first step) and the standardised raw pixels (cached per dataset and process)."""
    was_training = trial.method.training
    trial.method.eval()
    init = float(_knn_acc(trial))
    trial.method.train(was_training)
    cfg = trial.cfg
    raw = raw_pixel_baseline(trial.data, knn_k=cfg.knn_k, knn_t=cfg.knn_t,
                             probe_max_iter=cfg.probe_max_iter if cfg.probe else None)
    return {INIT_KEY: init, **raw}


@torch.inference_mode()
def _evaluate(trial: _Trial, gen: torch.Generator,
              augs: tuple[AugmentConfig, AugmentConfig]) -> dict[str, Tensor]:
    """kNN accuracy on the validation split (bank: the training split) + collapse diagnostics."""
    trial.method.eval()
    out = {"val_knn_acc": _knn_acc(trial)}
    # Collapse diagnostics on the projector embeddings of two augmented views of validation data.
    x, _ = next(trial.data.val.iter_batches(min(1024, len(trial.data.val)), None, shuffle=False,
                                            drop_last=False))
    x1, x2 = _views(trial, x, augs, gen)
    with trial._autocast():
        z1, z2 = trial.method.embed(x1), trial.method.embed(x2)
    out.update(collapse_diagnostics(z1, z2))
    trial.method.train()
    return out


def _probe(trial: _Trial) -> dict[str, float]:
    """Linear probe on frozen backbone features; the backbone is frozen and asserted so."""
    backbone = trial.method.backbone
    was_training = backbone.training
    backbone.eval()
    set_requires_grad(backbone, False)
    try:
        assert frozen(backbone)
        train, val, test = (trial.features(s) for s in
                            (trial.data.train, trial.data.val, trial.data.test))
        result = linear_probe(train, val, test, trial.data.num_classes, backbone=backbone,
                              max_iter=trial.cfg.probe_max_iter)
        test_knn = knn_predict(train[0], train[1], test[0], trial.data.num_classes,
                               k=trial.cfg.knn_k, temperature=trial.cfg.knn_t)
    finally:
        set_requires_grad(backbone, True)
        backbone.train(was_training)
    return {"probe_val_acc": result.val_acc, "probe_test_acc": result.test_acc,
            "probe_weight_decay": result.weight_decay,
            "test_knn_acc": float(accuracy(test_knn, test[1]))}


def setup_trial(cfg: TrialConfig, data: DataBundle, device: torch.device, *,
                compile: bool | None = None) -> _Trial:
    """The method on ``device`` as every step runs it: seeded initialisation, channels_last and
    autotuned (or deterministic) cuDNN on CUDA, ``torch.compile`` when ``cfg.compile``."""
    compile = cfg.compile if compile is None else compile
    if device.type == "cuda":
        # Autotuning picks the fastest convolution per shape (shapes are fixed: drop_last), but
        # may pick differently in another process: resume is bit-for-bit only when deterministic.
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
    torch.manual_seed(cfg.seed)  # weight initialisation
    method = build_method(cfg, data).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if compile:
        method.backbone.compile(mode=cfg.compile_mode)
    cfg = dataclasses.replace(cfg, compile=compile)
    return _Trial(cfg, data, device, method, eval_batch=1024 if device.type == "cuda" else 512)


def trial_optimizer(trial: _Trial, batch_size: int) -> torch.optim.Optimizer:
    """The configured optimiser at the peak learning rate for ``batch_size``."""
    cfg = trial.cfg
    return build_optimizer(cfg.optimizer, trial.method, lr=scaled_lr(cfg.base_lr, batch_size),
                           weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           fused=trial.device.type == "cuda",
                           fixed_lr_prefixes=trial.method.fixed_lr_prefixes())


def train_step(trial: _Trial, optimizer: torch.optim.Optimizer, x1: Tensor, x2: Tensor,
               y: Tensor, step: Step) -> dict[str, Tensor]:
    """One optimiser step of the method on two views; returns its (device) loss terms.

    No host sync: the caller accumulates the returned tensors on the device.
    """
    method = trial.method
    with trial._autocast():
        out: dict[str, Tensor] = method(x1, x2, y, step)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()  # type: ignore[no-untyped-call]
    method.before_optimizer_step(step)
    optimizer.step()
    method.after_step(step)
    return out


def _batches(trial: _Trial, gen: torch.Generator, batch_size: int
             ) -> Iterator[tuple[Tensor, Tensor]]:
    return iter(trial.data.train.iter_batches(batch_size, gen, shuffle=True, drop_last=True))


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
    augs = augment_configs(cfg, data.image_size)

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
    baselines = _baselines(trial) if INIT_KEY not in metrics else {
        k: metrics[k] for k in (INIT_KEY, *RAW_KEYS) if k in metrics}
    method.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums: dict[str, Tensor] = {}
        for i, (x, y) in enumerate(_batches(trial, gen, batch_size)):
            step = Step(epoch * steps_per_epoch + i, total_steps, epoch, steps_per_epoch)
            set_lr(optimizer, lr_at(step.step, total_steps=total_steps, warmup_steps=warmup_steps,
                                    peak_lr=peak_lr, final_lr=peak_lr * cfg.final_lr_ratio))
            x1, x2 = _views(trial, x, augs, gen)
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
            evals = _evaluate(trial, gen, augs)
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
        if epoch + 1 == cfg.epochs and cfg.probe:
            metrics.update(_probe(trial))
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
    import yaml

    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
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
        cfg = trial_config(overrides, source="command line", base=exp.trial)

        def vs(m: dict[str, float], acc: str, raw: str, init: str | None = None) -> str:
            """``0.794 (raw 0.790, +0.4; init 0.747)``: an accuracy, the raw-pixel baseline's and
            the difference in points, and the random-init encoder's (when given and known)."""
            notes = []
            if raw in m:
                d = (m[acc] - m[raw]) * 100
                sign = "±" if f"{abs(d):.1f}" == "0.0" else "+" if d > 0 else "−"
                notes.append(f"raw {m[raw]:.3f}, {sign}{abs(d):.1f}")
            if init is not None and init in m:
                notes.append(f"init {m[init]:.3f}")
            return f"{m[acc]:.3f} ({'; '.join(notes)})" if notes else f"{m[acc]:.3f}"

        def show(m: dict[str, float], _: Path | None) -> None:
            probe = (f"  probe val {vs(m, 'probe_val_acc', 'raw_probe_acc')} test "
                     f"{vs(m, 'probe_test_acc', 'raw_probe_test_acc')}"
                     if "probe_val_acc" in m else "")
            print(f"epoch {int(m['epoch']):3d}  loss {m['train_loss']:.4f}  "
                  f"val_knn {vs(m, 'val_knn_acc', 'raw_knn_acc', 'init_knn_acc')}  "
                  f"std×√d {m['embed_std_ratio']:.2f}  "
                  f"rank {m['effective_rank']:.1f}  {m['epoch_seconds']:.2f}s  "
                  f"{m['images_per_second']:.0f} img/s{probe}", flush=True)

        print(f"{cfg.method} on {cfg.dataset} ({cfg.backbone}), {cfg.epochs} epochs, "
              f"device {select_device(cfg.device)}", flush=True)
        run(cfg, report=show, checkpoint_dir=args.checkpoint_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrialFailure as exc:
        print(f"trial failed ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
