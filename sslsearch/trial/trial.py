"""The public trial API, shared by the training loop (:mod:`sslsearch.train`) and the throughput
benchmark (:mod:`sslsearch.bench`): build a trial's data, method and augmentations
(:func:`setup_trial`), take one step (:func:`train_step`) and evaluate its encoder (kNN monitor,
baselines, collapse diagnostics, linear probe). Torch only, like the loop."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from sslsearch import methods
from sslsearch.config import TrialConfig
from sslsearch.data import DataBundle, load_dataset_cached
from sslsearch.errors import ConfigError
from sslsearch.methods.base import Method, Step, Task
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup, global_batch_norm
from sslsearch.parts.networks import build_backbone, frozen, set_requires_grad
from sslsearch.parts.optim import build_optimizer, scaled_lr
from sslsearch.trial import labelfree
from sslsearch.trial.augment import AugmentConfig, Augmenter, normalize
from sslsearch.trial.baselines import INIT_KEY, raw_pixel_baseline
from sslsearch.trial.evaluation import (
    accuracy,
    collapse_diagnostics,
    extract,
    knn_predict,
    linear_probe,
)
from sslsearch.trial.fewlabel import few_label_probes


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
        image_size=cfg.image_size, skip_bad_images=cfg.skip_bad_images)


def build_method(cfg: TrialConfig, data: DataBundle) -> Method:
    """The method object (backbone + heads + state) for ``cfg`` on ``data``."""
    if data.kind == "tabular" and cfg.backbone != "mlp":
        raise ConfigError(f"dataset {cfg.dataset!r} is tabular: backbone must be mlp, "
                          f"found {cfg.backbone!r}")
    if data.kind == "image" and cfg.backbone == "mlp":
        raise ConfigError(f"dataset {cfg.dataset!r} holds images: backbone must be one of "
                          "small_cnn, resnet18, resnet34, resnet50")
    methods.check_labels_kept([cfg.method], cfg.labels and data.labeled, f"method {cfg.method}")
    backbone = build_backbone(cfg.backbone, in_channels=data.in_channels,
                              image_size=data.image_size, width=cfg.backbone_width)
    module = methods.get(cfg.method)
    method_cfg = methods.method_config(cfg.method, cfg.method_params)
    method: Method = module.Method(method_cfg, backbone, Task(data.kind, data.num_classes))
    return method


def augment_configs(cfg: TrialConfig, image_size: int, method: Method
                    ) -> tuple[AugmentConfig, AugmentConfig]:
    """The two views' augmentations (solarisation, when on, applies to the second view only);
    what ``method`` needs of its views (:meth:`Method.view_overrides`) wins over the trial's."""
    overrides: dict[str, Any] = {"jitter_strength": cfg.jitter_strength, "flip_p": cfg.flip_p,
                                 "grayscale_p": cfg.grayscale_p}
    if cfg.crop_min_scale is not None:
        overrides["crop_min_scale"] = cfg.crop_min_scale
    if cfg.blur_p is not None:
        overrides["blur_p"] = cfg.blur_p
    overrides.update(method.view_overrides())
    first = AugmentConfig.for_image_size(image_size, **overrides)
    return first, dataclasses.replace(first, solarize_p=cfg.solarize_p)


@dataclasses.dataclass
class LiveTrial:
    """The live objects of a trial (kept together so evaluation helpers stay small)."""

    cfg: TrialConfig
    data: DataBundle
    device: torch.device
    method: Method
    eval_batch: int
    augmenters: dict[AugmentConfig, Augmenter] = dataclasses.field(default_factory=dict)
    group: ProcessGroup = ONE_PROCESS  # the trial's workers (sslsearch.parts.distributed)

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
        return x.contiguous(memory_format=torch.channels_last)  # as the model's (setup_trial)

    @property
    def labeled(self) -> bool:
        """Labels to judge the encoder by (kNN, probe, baselines): the data has them and the
        trial does not ignore them (``labels: false``)."""
        return self.data.labeled and self.cfg.labels

    def features(self, split: Any) -> tuple[Tensor, Tensor]:
        """Backbone features of a whole split, in large batches, under inference mode."""
        backbone = self.method.backbone
        with self.autocast():
            return extract(lambda x: backbone(self.inputs(x)),
                           split.iter_batches(self.eval_batch, None, shuffle=False,
                                              drop_last=False))

    @property
    def bf16(self) -> bool:
        """Whether the trial computes under bf16 autocast: :func:`uses_bf16` of its precision."""
        return uses_bf16(self.cfg.precision, self.device)

    def autocast(self, bf16: bool | None = None) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when ``bf16`` (None: the trial's own :attr:`bf16`); weights, optimiser
        state and losses stay float32 (:func:`sslsearch.parts.ops.fp32_loss`)."""
        if self.bf16 if bf16 is None else bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@functools.cache  # asked at every step; the CPU does not change under a running process
def cpu_has_native_bf16() -> bool:
    """The CPU computes bf16 matmuls and convolutions natively (x86 avx512_bf16 or AMX), so
    autocast there is a speed-up; elsewhere bf16 is emulated through float32 and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, torch >= 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """The one rule for ``precision``: ``bf16`` always; ``auto`` on CUDA and on CPUs with native
    bf16 (:func:`cpu_has_native_bf16`); ``fp32`` never.

    Why auto on such CPUs: the small CNN's step is 2.5x faster on 2 cores of an avx512_bf16 CPU
    (bench, 2026-12-03), and every method's FAST learning test keeps its margin (README, Speed).
    """
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def two_views(trial: LiveTrial, x: Tensor, augs: tuple[AugmentConfig, AugmentConfig],
              gen: torch.Generator, rows: slice | None = None) -> tuple[Tensor, Tensor]:
    """Two augmented views of ``x``, or of its ``rows`` only (a worker's shard of the global
    batch ``x``: the augmentations are drawn for all of it, :class:`Augmenter`)."""
    if trial.data.kind == "tabular":
        x = x if rows is None else x[rows]
        return x, x  # tabular data gets no augmentation, only mixing (i-Mix, Lee et al., 2021)
    x1 = trial.augmenter(augs[0])(x, gen, rows)
    x2 = trial.augmenter(augs[1])(x, gen, rows)
    # channels_last, as the model's (setup_trial)
    return (x1.contiguous(memory_format=torch.channels_last),
            x2.contiguous(memory_format=torch.channels_last))


@torch.inference_mode()
def knn_acc(trial: LiveTrial) -> Tensor:
    """Validation kNN accuracy of the backbone's features (bank: the training split)."""
    train_f, train_y = trial.features(trial.data.train)
    val_f, val_y = trial.features(trial.data.val)
    pred = knn_predict(train_f, train_y, val_f, trial.data.num_classes, k=trial.cfg.knn_k,
                       temperature=trial.cfg.knn_t)
    return accuracy(pred, val_y)


def trial_baselines(trial: LiveTrial) -> dict[str, float]:
    """What the trial's accuracies are compared with: its encoder at random initialisation (call
    before the first step) and the standardised raw pixels (cached per dataset and process);
    none without labels."""
    if not trial.labeled:
        return {}
    was_training = trial.method.training
    trial.method.eval()
    init = float(knn_acc(trial))
    trial.method.train(was_training)
    cfg = trial.cfg
    raw = raw_pixel_baseline(trial.data, knn_k=cfg.knn_k, knn_t=cfg.knn_t,
                             probe_max_iter=cfg.probe_max_iter if cfg.probe else None)
    return {INIT_KEY: init, **raw}


@torch.inference_mode()
def evaluate_epoch(trial: LiveTrial, gen: torch.Generator,
              augs: tuple[AugmentConfig, AugmentConfig]) -> dict[str, Tensor]:
    """kNN accuracy on the validation split (bank: the training split) + collapse diagnostics."""
    trial.method.eval()
    out = {"val_knn_acc": knn_acc(trial)} if trial.labeled else {}
    # Collapse diagnostics on the projector embeddings of two augmented views of validation data.
    x, _ = next(trial.data.val.iter_batches(min(1024, len(trial.data.val)), None, shuffle=False,
                                            drop_last=False))
    x1, x2 = two_views(trial, x, augs, gen)
    with trial.autocast():
        z1, z2 = trial.method.embed(x1), trial.method.embed(x2)
    out.update(collapse_diagnostics(z1, z2))
    if trial.cfg.label_free:
        out.update(label_free_metrics(trial, augs))
    trial.method.train()
    return out


LIDAR_IMAGES, LIDAR_VIEWS = 256, 4  # LiDAR's surrogate classes and their augmented views


@torch.inference_mode()
def label_free_metrics(trial: LiveTrial, augs: tuple[AugmentConfig, AugmentConfig]
                       ) -> dict[str, Tensor]:
    """RankMe and α-ReQ of the backbone features of the first ``label_free_samples``
    validation images, LiDAR of ``LIDAR_VIEWS`` augmented views of the first ``LIDAR_IMAGES``
    (:mod:`sslsearch.trial.labelfree`). On the backbone, not the projector, whose width caps the
    rank. The views come from a generator seeded by the trial's seed alone, so the metrics draw
    nothing from the training's random stream (a run with them off trains the same)."""
    cfg, backbone = trial.cfg, trial.method.backbone
    x, _ = next(trial.data.val.iter_batches(min(cfg.label_free_samples, len(trial.data.val)),
                                            None, shuffle=False, drop_last=False))
    with trial.autocast():
        features = backbone(trial.inputs(x)).float()
    out: dict[str, Tensor] = {}
    for name in ("rankme", "alpha_req"):
        out.update(labelfree.METRICS[name].compute(features))
    if trial.data.kind == "image":  # rows get no augmentation: no views to tell apart
        gen = torch.Generator(device=trial.device).manual_seed(cfg.seed)
        images = x[:LIDAR_IMAGES]
        views = []
        for _ in range(LIDAR_VIEWS // 2):
            v1, v2 = two_views(trial, images, augs, gen)
            with trial.autocast():
                views += [backbone(v1).float(), backbone(v2).float()]
        out.update(labelfree.METRICS["lidar"].compute(torch.stack(views, dim=1)))
    return out


@contextlib.contextmanager
def frozen_backbone(trial: LiveTrial) -> Iterator[nn.Module]:
    """The backbone in eval mode with no parameter taking a gradient (asserted), restored after:
    a linear probe scores features, it must not train them."""
    backbone = trial.method.backbone
    was_training = backbone.training
    backbone.eval()
    set_requires_grad(backbone, False)
    try:
        assert frozen(backbone)
        yield backbone
    finally:
        set_requires_grad(backbone, True)
        backbone.train(was_training)


def probe(trial: LiveTrial) -> dict[str, float]:
    """Linear probe on frozen backbone features; the backbone is frozen and asserted so."""
    with frozen_backbone(trial) as backbone:
        train, val, test = (trial.features(s) for s in
                            (trial.data.train, trial.data.val, trial.data.test))
        result = linear_probe(train, val, test, trial.data.num_classes, backbone=backbone,
                              max_iter=trial.cfg.probe_max_iter)
        test_knn = knn_predict(train[0], train[1], test[0], trial.data.num_classes,
                               k=trial.cfg.knn_k, temperature=trial.cfg.knn_t)
        few = few_label_probes(train, val, test, trial.data.num_classes,
                               seed=trial.cfg.split_seed, max_iter=trial.cfg.probe_max_iter
                               ) if trial.cfg.few_label else []
    return {"probe_val_acc": result.val_acc, "probe_test_acc": result.test_acc,
            "probe_weight_decay": result.weight_decay,
            "test_knn_acc": float(accuracy(test_knn, test[1])),
            **{k: v for r in few for k, v in r.metrics().items()}}


def probe_on_labeled_folder(trial: LiveTrial, folder: str) -> dict[str, float]:
    """An unlabeled search's encoder probed on a labeled ImageFolder (``probe_data_dir``), for
    reporting only: its images resized to the training data's size and normalised with the
    training data's statistics, as the encoder saw its own data. Keys ``probe_data_*``, so that
    nothing that ranks or selects trials reads them."""
    cfg = trial.cfg
    data = load_dataset_cached("imagefolder", data_dir=folder, image_size=trial.data.image_size,
                               val_fraction=cfg.val_fraction, seed=cfg.split_seed,
                               device=trial.device, skip_bad_images=cfg.skip_bad_images)
    with frozen_backbone(trial) as backbone:
        train, val, test = (trial.features(s) for s in (data.train, data.val, data.test))
        result = linear_probe(train, val, test, data.num_classes, backbone=backbone,
                              max_iter=cfg.probe_max_iter)
    return {"probe_data_val_acc": result.val_acc, "probe_data_test_acc": result.test_acc}


def setup_trial(cfg: TrialConfig, data: DataBundle, device: torch.device, *,
                compile: bool | None = None, group: ProcessGroup = ONE_PROCESS) -> LiveTrial:
    """The method on ``device`` as every step runs it: seeded initialisation, channels_last for
    images, autotuned (or deterministic) cuDNN on CUDA, ``torch.compile`` when ``cfg.compile``.

    Several workers (``group``): BatchNorm over the global batch, rank 0's weights on every rank
    (already equal, from the same seed; the broadcast makes sure), the method told its group."""
    compile = cfg.compile if compile is None else compile
    if device.type == "cuda":
        # Autotuning picks the fastest convolution per shape (shapes are fixed: drop_last), but
        # may pick differently in another process: resume is bit-for-bit only when deterministic.
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
    torch.manual_seed(cfg.seed)  # weight initialisation
    method = build_method(cfg, data).to(device)
    if group.world_size > 1:
        method = distribute(method, group)
    if data.kind == "image":
        # On every device: convolutions in channels_last are faster with CUDA's tensor cores and
        # with the CPU's oneDNN too (small CNN fwd + bwd, fp32, 2 cores, 2026-12-03: 1.05x at 8 px,
        # 1.3x at 28 px, 1.6x at 3 x 32 px). Inputs follow (LiveTrial.inputs, two_views).
        method = method.to(memory_format=torch.channels_last)
    if compile:
        method.backbone.compile(mode=cfg.compile_mode)
    cfg = dataclasses.replace(cfg, compile=compile)
    return LiveTrial(cfg, data, device, method, eval_batch=1024 if device.type == "cuda" else 512,
                     group=group)


def distribute(method: Method, group: ProcessGroup) -> Method:
    """``method`` for ``group``'s workers: its BatchNorm layers over the global batch
    (:class:`~sslsearch.parts.distributed.GlobalBatchNorm`), rank 0's weights and buffers on every
    rank, and the method told its group (its forward gathers what its loss needs)."""
    global_batch_norm(method, group)
    group.broadcast_module(method)
    method.group = group
    return method


def trial_optimizer(trial: LiveTrial, batch_size: int) -> torch.optim.Optimizer:
    """The configured optimiser at the peak learning rate for ``batch_size``."""
    cfg = trial.cfg
    lr = scaled_lr(cfg.base_lr, batch_size, cfg.optimizer, cfg.lr_scaling)
    return build_optimizer(cfg.optimizer, trial.method, lr=lr,
                           weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           fused=trial.device.type == "cuda",
                           fixed_lr_prefixes=trial.method.fixed_lr_prefixes())


def train_step(trial: LiveTrial, optimizer: torch.optim.Optimizer, x1: Tensor, x2: Tensor,
               y: Tensor, step: Step, *, bf16: bool | None = None) -> dict[str, Tensor]:
    """One optimiser step of the method on two views; returns its (device) loss terms.

    ``bf16``: autocast or not whatever the trial's precision (the benchmark's conventional path);
    None: the trial's. No host sync: the caller accumulates the returned tensors on the device.
    """
    method = trial.method
    with trial.autocast(bf16):
        out: dict[str, Tensor] = method(x1, x2, y, step)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()  # type: ignore[no-untyped-call]
    trial.group.average_gradients(method)  # several workers: the mean over them (not the sum)
    method.before_optimizer_step(step)
    optimizer.step()
    method.after_step(step)
    return out


def train_batches(trial: LiveTrial, gen: torch.Generator, batch_size: int
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    return iter(trial.data.train.iter_batches(batch_size, gen, shuffle=True, drop_last=True))
