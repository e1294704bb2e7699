"""Pretraining throughput: our on-device pipeline against a conventional DataLoader one, one run.

A benchmark, not a test::

    python -m sslsearch.bench                                  # synthetic CIFAR-shaped data
    python -m sslsearch.bench --dataset digits --backbone small_cnn --batch-size 256
    python -m sslsearch.bench --backbone resnet18 --batch-size 512 --compile     # on a GPU
    python -m sslsearch.bench --dataset digits --trials 2      # K trials packed on one device
    python -m sslsearch.bench search --help                    # does the search beat defaults?

**The two paths** run the *same* model step (``method(x1, x2, y, step)`` under the training
loop's autocast, then backward and the optimiser step, with the method, optimiser and augmentation
configs built by :mod:`sslsearch.train`'s own helpers) and differ only in where the two views come
from:

* **ours**: the dataset is resident on the device as ``uint8``; a batch is an index gather and both
  views are augmented batched, per-sample random, on the device (:func:`sslsearch.augment.augment`);
  bf16 autocast and channels_last on CUDA (``--precision bf16``: autocast on the CPU too, for
  both paths); optionally ``torch.compile`` of the backbone.
* **conventional** (what the public libraries do): a ``Dataset`` hands out PIL images of the same
  uint8 pixels, torchvision ``transforms.v2`` build two views per sample (RandomResizedCrop,
  flip, ColorJitter with p = 0.8, RandomGrayscale, blur/solarise where our config has them,
  ToImage/ToDtype/Normalize; colour ops skipped for 1-channel data) in ``DataLoader`` worker
  processes (persistent, shuffled, drop_last, pinned on CUDA); the batch is then copied to the
  device and goes through the identical step.

**Timing protocol.** Shared machines are noisy (the same step can take 2-5x longer from one minute
to the next), so the two paths are never timed in separate runs: after ``--warmup`` untimed steps
of each, ``--rounds`` rounds each time ``--window`` steps of ours, then ``--window`` steps of the
conventional path, in one process. A step's time is the interval between the starts of consecutive
steps: ``time.perf_counter`` on CPU (where ops are synchronous), CUDA events recorded on the stream
at each step start on GPU, with one ``synchronize`` per window only, so the host is never stalled
mid-window; the interval covers fetching the batch (gather, or waiting for the loader and the
host-to-device copy), augmentation and the model step. A window's step time is the mean of its
steps (a loader delivers in bursts: its workers finish batches nearly together, so one step waits
and the next few find their batch ready; the median single step would time the model, not the
loader). Per path the median and the minimum window step time become images/s (``batch / time``;
each image is two views), and the report gives the ratios of the medians and of the minima.

Two details keep either path from being timed on the other's work. The loader's workers keep a
prefetch queue of ``workers x prefetch_factor`` batches, filled while our window ran: before each
conventional window the ready batches are fetched and discarded (no model step, so the workers
cannot refill the queue meanwhile) until a fetch has to wait for a worker, and the window is then
at least twice the queue's length; before each of our windows the process sleeps while the
workers refill that queue (about as long as that many conventional steps took), so they do not
steal cores from our timed steps.

**CPU time.** On a CPU the paths also compete for cores with everything else on the machine, and
under load a path with more processes (the conventional one: main + workers) simply gets a larger
share of them. So the report also gives CPU seconds per step: this process's (``process_time``)
during each path's steps, plus for the conventional path its workers' (from ``/proc``, Linux)
over all rounds divided by the batches they produced; the ratio of those is throughput per core,
which load does not skew (but OpenMP threads spinning on an oversubscribed machine inflate it).

**Breakdown** of our step: ``--rounds x --window / 2`` iterations, each timing three phases back to
back: augmentation alone (batch gather + both views), the model alone (``embed`` of both views, a
trivial loss, backward, optimiser step) and a full step. Shares are medians over the full step's
median: *augmentation*, *model* (encoder + projector forward/backward and optimiser) and *loss &
extras*, the remainder: the loss's forward/backward and whatever else the method does (predictor,
EMA target, queue); it can come out slightly negative under noise and is reported as measured.

**Compute.** FLOPs per image (forward + backward, both views) are counted once with
``torch.utils.flop_counter`` on a meta-device copy of the method; achieved TFLOP/s is that times
images/s, and on a known GPU (or with ``--peak-tflops``) the compute bound is peak / FLOPs.

**Packing** (``--trials K``): one trial alone, then K trials at once on the same device, then one
alone again, each a subprocess running our path only (after warm-up they wait at a barrier, then
run for ``--duration`` seconds together) and printing its throughput as JSON. On CPU each of the K
gets ``cores / K`` intra-op threads (as Ray's ``cpus_per_trial`` would give it), a lone trial all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from sslsearch.augment import _BRIGHTNESS, _CONTRAST, _HUE, _SATURATION, AugmentConfig
from sslsearch.augment import _blur_kernel_size as blur_kernel_size
from sslsearch.config import TrialConfig, trial_config
from sslsearch.data import DATASETS, DataBundle, Split
from sslsearch.errors import ConfigError
from sslsearch.methods.base import Step
from sslsearch.networks import BACKBONES
from sslsearch.train import (
    _batches,
    _Trial,
    _views,
    augment_configs,
    build_method,
    load_data,
    setup_trial,
    train_step,
    trial_optimizer,
)
from sslsearch.train import select_device as _select_device

__all__ = ["BenchConfig", "format_report", "main", "run_benchmark", "run_packing"]

# On a CPU shared with other work, OpenMP threads that spin-wait at every barrier can make a step
# several times slower (seen: 4.5x for the small CNN on 2 busy cores); passive waiting avoids it.
SPIN_NOTE = ("note: several OpenMP threads and OMP_WAIT_POLICY unset: on a busy CPU, spinning "
             "threads slow both paths; compare with OMP_WAIT_POLICY=PASSIVE or --threads 1")
PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready
SYNTHETIC_SIZE = 10_000  # images in the synthetic dataset
DRAIN_WAIT_S = 0.02  # a fetch slower than this waited for a worker: the loader's queue is empty
MAX_SETTLE_S = 5.0  # cap on the pause that lets the loader refill its prefetch queue
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets. First match
# in the device name wins, so the specific names come before the generic ones.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0),
)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how; ``check`` gives one-line errors for values out of range."""

    method: str = "simclr"
    backbone: str = "small_cnn"
    backbone_width: int = 0  # 0: the architecture's default width
    dataset: str = "synthetic"  # or any sslsearch.data dataset of images
    data_dir: str | None = None
    batch_size: int = 256
    image_size: int | None = None  # synthetic: 32; a dataset: its own size unless given
    channels: int = 3  # synthetic data only
    optimizer: str = "adamw"
    device: str = "auto"
    compile: bool = False
    compile_mode: str = "default"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU (see TrialConfig)
    rounds: int = 5  # alternating (ours, conventional) windows
    window: int = 10  # timed steps per window
    warmup: int = 5  # untimed steps per path before the first window
    # 8 workers per GPU: a common setting of public SSL recipes (e.g. SCAN's CIFAR configs).
    workers: int = dataclasses.field(default_factory=lambda: min(8, os.cpu_count() or 1))
    trials: int = 0  # > 0: the packing benchmark with this many trials instead
    duration: float = 15.0  # seconds each packing measurement runs
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    peak_tflops: float | None = None  # the device's peak; None: look it up by the device name

    def check(self) -> None:
        def need(ok: bool, flag: str, value: Any, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag} {value!r} is out of range; allowed: {allowed}")

        need(self.dataset == "synthetic" or self.dataset in DATASETS, "dataset", self.dataset,
             "synthetic, " + ", ".join(DATASETS))
        need(self.backbone in BACKBONES, "backbone", self.backbone, ", ".join(BACKBONES))
        need(self.backbone_width >= 0, "backbone-width", self.backbone_width,
             "an integer >= 0 (0: the default width)")
        need(self.batch_size >= 2, "batch-size", self.batch_size, "an integer >= 2")
        need(self.image_size is None or self.image_size >= 4, "image-size", self.image_size,
             "an integer >= 4")
        need(self.channels in (1, 3), "channels", self.channels, "1 or 3")
        need(self.rounds >= 1, "rounds", self.rounds, "an integer >= 1")
        need(self.window >= 1, "window", self.window, "an integer >= 1")
        need(self.warmup >= 1, "warmup", self.warmup, "an integer >= 1")
        need(self.workers >= 0, "workers", self.workers, "an integer >= 0")
        need(self.trials >= 0, "trials", self.trials, "an integer >= 0")
        need(self.duration > 0, "duration", self.duration, "seconds > 0")
        need(self.threads >= 0, "threads", self.threads, "an integer >= 0")
        need(self.peak_tflops is None or self.peak_tflops > 0, "peak-tflops", self.peak_tflops,
             "a number > 0")

    def trial(self) -> TrialConfig:
        """The training loop's config for this benchmark (validated by ``trial_config``)."""
        values: dict[str, Any] = {"method": self.method, "backbone": self.backbone,
                                  "backbone_width": self.backbone_width,
                                  "dataset": self.dataset, "data_dir": self.data_dir,
                                  "batch_size": self.batch_size, "optimizer": self.optimizer,
                                  "device": self.device, "compile": self.compile,
                                  "compile_mode": self.compile_mode,
                                  "precision": self.precision}
        if self.dataset != "synthetic" and self.image_size is not None:
            values["image_size"] = self.image_size
        return trial_config(values, source="command line")


# ------------------------------------------------------------------------------------------------
# Data and the shared model step.


def synthetic_data(n: int, channels: int, size: int, device: torch.device) -> DataBundle:
    """Random uint8 images (no download) with random labels among 10 classes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    mean = tuple(float(m) for m in x.float().div(255).mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in x.float().div(255).std(dim=(0, 2, 3)))
    split = Split(x.to(device), y.to(device))
    return DataBundle(name="synthetic", kind="image", train=split, val=split, test=split,
                      num_classes=10, in_channels=channels, image_size=size, mean=mean, std=std)


@dataclasses.dataclass
class _Setup:
    """The live objects one benchmark process trains with."""

    trial: _Trial
    optimizer: torch.optim.Optimizer
    augs: tuple[AugmentConfig, AugmentConfig]
    gen: torch.Generator
    batch_size: int
    steps: int = 0  # steps taken so far (all paths): the ``Step`` handed to the method

    @property
    def device(self) -> torch.device:
        return self.trial.device

    def next_step(self) -> Step:
        spe = len(self.trial.data.train) // self.batch_size
        step = Step(self.steps, 10**9, self.steps // spe, spe)  # total: far away, LR stays flat
        self.steps += 1
        return step


def setup(bc: BenchConfig) -> _Setup:
    """Data on the device, the method, its optimiser and augmentations, as ``train.run`` has them.

    One difference: the learning rate stays at its peak (no schedule), which costs nothing anyway.
    """
    cfg = bc.trial()
    device = _select_device(cfg.device)
    if bc.dataset == "synthetic":
        data = synthetic_data(SYNTHETIC_SIZE, bc.channels, bc.image_size or 32, device)
    else:
        data = load_data(cfg, device)
    if data.kind != "image" or not isinstance(data.train, Split):
        raise ConfigError(f"--dataset {bc.dataset!r}: the benchmark needs images resident in "
                          "memory (not a tabular or streaming dataset)")
    if bc.batch_size > len(data.train):
        raise ConfigError(f"--batch-size {bc.batch_size} is larger than the {len(data.train)} "
                          f"training images of {bc.dataset!r}")
    trial = setup_trial(cfg, data, device)
    trial.method.train()
    optimizer = trial_optimizer(trial, bc.batch_size)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return _Setup(trial, optimizer, augment_configs(cfg, data.image_size), gen, bc.batch_size)


def model_step(s: _Setup, x1: Tensor, x2: Tensor, y: Tensor) -> dict[str, Tensor]:
    """One optimiser step on two views: ``train.train_step``, the body of ``train.run``'s loop
    (minus the LR schedule, which costs nothing)."""
    return train_step(s.trial, s.optimizer, x1, x2, y, s.next_step())


class OursPath:
    """Batches gathered from the resident uint8 data, both views augmented on the device."""

    def __init__(self, s: _Setup) -> None:
        self.s = s
        self._it = _batches(s.trial, s.gen, s.batch_size)

    def batch(self) -> tuple[Tensor, Tensor]:
        try:
            return next(self._it)
        except StopIteration:  # a new epoch: a new permutation
            self._it = _batches(self.s.trial, self.s.gen, self.s.batch_size)
            return next(self._it)

    def views(self) -> tuple[Tensor, Tensor, Tensor]:
        x, y = self.batch()
        x1, x2 = _views(self.s.trial, x, self.s.augs, self.s.gen)
        return x1, x2, y

    def step(self) -> None:
        model_step(self.s, *self.views())

    def model_only(self, x1: Tensor, x2: Tensor) -> None:
        """Encoder + projector forward on both views, a trivial loss, backward, optimiser step."""
        method = self.s.trial.method
        with self.s.trial._autocast():
            loss = method.embed(x1).float().mean() + method.embed(x2).float().mean()
        self.s.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.s.optimizer.step()


# ------------------------------------------------------------------------------------------------
# The conventional path: torchvision transforms per sample in DataLoader workers.


def conventional_transform(aug: AugmentConfig, size: int, channels: int,
                           mean: Sequence[float], std: Sequence[float]) -> Any:
    """torchvision's per-image version of ``aug`` (the libraries' SimCLR recipe), PIL in."""
    from torchvision.transforms import v2

    ops: list[Any] = []
    if aug.crop_min_scale < 1.0:
        ops.append(v2.RandomResizedCrop(size, scale=(aug.crop_min_scale, 1.0),
                                        ratio=aug.crop_ratio, antialias=True))
    if aug.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(aug.flip_p))
    s = aug.jitter_strength
    if channels == 3 and aug.jitter_p > 0 and s > 0:
        jitter = v2.ColorJitter(_BRIGHTNESS * s, _CONTRAST * s, _SATURATION * s, min(0.5, _HUE * s))
        ops.append(v2.RandomApply([jitter], p=aug.jitter_p))
    if channels == 3 and aug.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(aug.grayscale_p))
    if aug.blur_p > 0:
        blur = v2.GaussianBlur(blur_kernel_size(size), sigma=aug.blur_sigma)
        ops.append(v2.RandomApply([blur], p=aug.blur_p))
    if aug.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=aug.solarize_p))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class TwoViewPILDataset(torch.utils.data.Dataset[tuple[Tensor, Tensor, int]]):
    """The same uint8 pixels as PIL images (as torchvision's CIFAR10 serves them), 2 views each."""

    def __init__(self, x: Tensor, y: Tensor, transforms: tuple[Any, Any]) -> None:
        self.images = x.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C uint8
        self.labels = y.cpu().tolist()
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        from torchvision.transforms.v2.functional import to_pil_image

        img = to_pil_image(self.images[i])  # H x W x 1 -> mode L, H x W x 3 -> RGB
        return self.transforms[0](img), self.transforms[1](img), self.labels[i]


class ConventionalPath:
    """A DataLoader with worker processes feeding the identical model step."""

    def __init__(self, s: _Setup, workers: int) -> None:
        self.s = s
        data = s.trial.data
        assert isinstance(data.train, Split)
        tfs = tuple(conventional_transform(a, data.image_size, data.in_channels, data.mean,
                                           data.std) for a in s.augs)
        self.loader: torch.utils.data.DataLoader[tuple[Tensor, Tensor, int]] = (
            torch.utils.data.DataLoader(
                TwoViewPILDataset(data.train.x, data.train.y, (tfs[0], tfs[1])),
                batch_size=s.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                persistent_workers=workers > 0, pin_memory=s.device.type == "cuda",
                prefetch_factor=PREFETCH_FACTOR if workers > 0 else None))
        self.prefetched = workers * PREFETCH_FACTOR  # batches ready when the workers are idle
        self._it: Iterator[Any] = iter(self.loader)

    def _next(self) -> tuple[Tensor, Tensor, Tensor]:
        try:
            return next(self._it)  # type: ignore[no-any-return]
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)  # type: ignore[no-any-return]

    def drain(self) -> int:
        """Discard ready batches until a fetch has to wait for a worker; returns how many.

        The workers fill their queue whenever the other path runs. Timing from an empty queue
        (with every worker busy) measures the steady state, where the loader must keep up alone;
        draining it with model steps instead would let the workers refill it meanwhile.
        """
        for i in range(4 * self.prefetched + 4):
            t0 = time.perf_counter()
            self._next()
            if time.perf_counter() - t0 > DRAIN_WAIT_S:
                return i + 1
        return 4 * self.prefetched + 4

    def batch(self) -> tuple[Tensor, Tensor, Tensor]:
        x1, x2, y = self._next()
        dev = self.s.device
        x1, x2, y = (t.to(dev, non_blocking=True) for t in (x1, x2, y))
        if dev.type == "cuda":
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        return x1, x2, y

    def step(self) -> None:
        model_step(self.s, *self.batch())

    def workers_cpu_s(self) -> float | None:
        """CPU seconds the loader's worker processes have used so far (None off Linux)."""
        workers = getattr(self._it, "_workers", [])  # the iterator's processes (private attr.)
        total = 0.0
        for w in workers:
            t = _proc_cpu_s(w.pid)
            if t is None:
                return None
            total += t
        return total

    def close(self) -> None:
        """End the worker processes (they belong to the iterator)."""
        self._it = iter(())
        del self.loader


# ------------------------------------------------------------------------------------------------
# Timing.


def time_phases(phases: Sequence[Callable[[], object]], n: int,
                device: torch.device) -> list[list[float]]:
    """Run ``phases`` in order ``n`` times; seconds of each phase run, per phase.

    A phase's time runs from its start to the next phase's start: perf_counter on CPU, CUDA events
    on the current stream on GPU (one synchronize at the end, none in between).
    """
    k = len(phases)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                  for _ in range(n * k + 1)]
        for i in range(n):
            for j, phase in enumerate(phases):
                events[i * k + j].record()
                phase()
        events[-1].record()
        events[-1].synchronize()
        flat = [a.elapsed_time(b) / 1e3 for a, b in zip(events[:-1], events[1:], strict=True)]
    else:
        flat = []
        t = time.perf_counter()
        for _ in range(n):
            for phase in phases:
                phase()
                now = time.perf_counter()
                flat.append(now - t)
                t = now
    return [flat[j::k] for j in range(k)]


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": state is field 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(windows: Sequence[Sequence[float]], batch: int) -> dict[str, float]:
    """Throughput per timed window (its steps' mean time), then the median and best window.

    Not the median of single steps: a loader's W workers finish their batches nearly together, so
    its step intervals come in bursts (one long wait, then W - 1 batches already there). The
    median single step is then a step whose batch was waiting, i.e. the model's time, and says
    nothing about how fast the loader delivers. A window's mean covers whole bursts.
    """
    means = [statistics.fmean(w) for w in windows]
    med, best = statistics.median(means), min(means)
    steps = [t for w in windows for t in w]
    return {"steps": len(steps), "windows": len(means), "median_step_s": med, "min_step_s": best,
            "single_step_median_s": statistics.median(steps),
            "images_per_s_median": batch / med, "images_per_s_best": batch / best}


def flops_per_image(bc: BenchConfig, data: DataBundle) -> float | None:
    """Forward + backward FLOPs per image (both views) of the method's step, or None if uncountable.

    Counted on a meta-device copy: no memory, no time, and the benchmarked model is untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    b = 8
    try:
        with torch.device("meta"):
            method = build_method(bc.trial(), data)
            method.train()
            x = torch.zeros(b, data.in_channels, data.image_size, data.image_size)
            y = torch.zeros(b, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            out = method(x, x, y, Step(0, 10**9, 0, 1))
            out["loss"].backward()
        return float(counter.get_total_flops()) / b
    except Exception:  # a method with host-side logic (e.g. .item()) cannot run on meta tensors
        return None


def peak_tflops(bc: BenchConfig, device: torch.device) -> float | None:
    if bc.peak_tflops is not None:
        return bc.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_TFLOPS if key in name), None)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores, "
            f"OMP_WAIT_POLICY {policy})")


# ------------------------------------------------------------------------------------------------
# The benchmarks.


def run_benchmark(bc: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ours against the conventional path in alternating windows; returns the result dict."""
    bc.check()
    say = log or (lambda _: None)
    s = setup(bc)
    dev, b = s.device, bc.batch_size
    ours = OursPath(s)
    conv = ConventionalPath(s, bc.workers)
    try:
        say(f"warm-up: {bc.warmup} steps per path (includes compile and worker start-up)")
        time_phases([ours.step], bc.warmup, dev)
        conv_warm = time_phases([conv.step], bc.warmup, dev)[0]
        settle = min(MAX_SETTLE_S, conv.prefetched * conv_warm[-1])
        ours_t: list[list[float]] = []  # step times, one list per timed window
        conv_t: list[list[float]] = []
        ours_cpu = conv_cpu = 0.0  # this process's CPU seconds in each path's steps
        time.sleep(settle)  # the loader's workers refill their queue, then idle
        workers0 = conv.workers_cpu_s()
        conv_window = max(bc.window, 2 * conv.prefetched)  # well past the start-up transient
        conv_steps = 0
        for r in range(bc.rounds):
            c0 = time.process_time()
            ours_t.append(time_phases([ours.step], bc.window, dev)[0])
            c1 = time.process_time()
            conv_steps += conv.drain() + conv_window
            window = time_phases([conv.step], conv_window, dev)[0]
            conv_cpu += time.process_time() - c1
            ours_cpu += c1 - c0
            conv_t.append(window)
            conv_mean = statistics.fmean(window)
            settle = min(MAX_SETTLE_S, conv.prefetched * conv_mean)
            time.sleep(settle)  # the queue is full again: workers produced what was consumed
            ours_mean = statistics.fmean(ours_t[-1])
            say(f"round {r + 1}/{bc.rounds}: ours {b / ours_mean:.0f} img/s, "
                f"conventional {b / conv_mean:.0f} img/s")
        workers1 = conv.workers_cpu_s()
    finally:
        conv.close()
    workers_cpu = None if workers0 is None or workers1 is None else workers1 - workers0

    say("breakdown of our step")
    holder: list[tuple[Tensor, Tensor, Tensor]] = []

    def aug_phase() -> None:
        holder[:] = [ours.views()]

    def model_phase() -> None:
        x1, x2, _ = holder.pop()
        ours.model_only(x1, x2)

    aug_t, model_t, full_t = time_phases([aug_phase, model_phase, ours.step],
                                         _breakdown_samples(bc), dev)
    step_med = statistics.median(full_t)
    aug_med, model_med = statistics.median(aug_t), statistics.median(model_t)
    loss_med = step_med - aug_med - model_med

    data = s.trial.data
    result: dict[str, Any] = {
        "config": dataclasses.asdict(bc),
        "device": _device_name(dev),
        "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else 0,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "data": {"name": data.name, "train_images": len(data.train),
                 "shape": [data.in_channels, data.image_size, data.image_size]},
        "ours": {**_summary(ours_t, b), "cpu_s_per_step": ours_cpu / (bc.rounds * bc.window)},
        "conventional": {
            **_summary(conv_t, b),
            "cpu_s_per_step": None if workers_cpu is None
            else (conv_cpu + workers_cpu) / conv_steps,
            "workers_cpu_s_per_step": None if workers_cpu is None else workers_cpu / conv_steps},
        "breakdown": {"samples": len(full_t), "step_s": step_med, "augment_s": aug_med,
                      "model_s": model_med, "loss_s": loss_med, "augment_share": aug_med / step_med,
                      "model_share": model_med / step_med, "loss_share": loss_med / step_med},
    }
    result["ratio_median"] = (result["ours"]["images_per_s_median"]
                              / result["conventional"]["images_per_s_median"])
    result["ratio_best"] = (result["ours"]["images_per_s_best"]
                            / result["conventional"]["images_per_s_best"])
    oc, cc = result["ours"]["cpu_s_per_step"], result["conventional"]["cpu_s_per_step"]
    result["ratio_cpu"] = None if cc is None or oc <= 0 else cc / oc
    result["compute"] = _compute(bc, data, dev, result["ours"]["images_per_s_median"])
    return result


def _breakdown_samples(bc: BenchConfig) -> int:
    """Half as many as each path's timed steps (each sample costs about two steps)."""
    return bc.rounds * -(-bc.window // 2)


def _compute(bc: BenchConfig, data: DataBundle, device: torch.device,
             images_per_s: float) -> dict[str, float | None]:
    flops = flops_per_image(bc, data)
    peak = peak_tflops(bc, device)
    achieved = None if flops is None else flops * images_per_s / 1e12
    bound = None if flops is None or peak is None else peak * 1e12 / flops
    return {"gflop_per_image": None if flops is None else flops / 1e9,
            "achieved_tflops": achieved, "peak_tflops": peak, "bound_images_per_s": bound,
            "fraction_of_bound": None if bound is None else images_per_s / bound}


def _child(bc: BenchConfig) -> int:
    """One packed trial: our path only; warm up, say READY, wait for GO, run ``duration`` s."""
    s = setup(bc)
    ours = OursPath(s)
    time_phases([ours.step], bc.warmup, s.device)
    _sync(s.device)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    times: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < bc.duration:  # windows as in run_benchmark: one sync each
        times += time_phases([ours.step], bc.window, s.device)[0]
    _sync(s.device)
    elapsed = time.perf_counter() - t0
    out = {"steps": len(times), "seconds": elapsed,
           "images_per_s": len(times) * bc.batch_size / elapsed,
           "images_per_s_median": bc.batch_size / statistics.median(times),
           "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _child_argv(bc: BenchConfig, threads: int) -> list[str]:
    argv = [sys.executable, "-m", "sslsearch.bench", "--child",
            "--method", bc.method, "--backbone", bc.backbone, "--dataset", bc.dataset,
            "--backbone-width", str(bc.backbone_width),
            "--batch-size", str(bc.batch_size), "--channels", str(bc.channels),
            "--optimizer", bc.optimizer, "--device", bc.device, "--warmup", str(bc.warmup),
            "--precision", bc.precision,
            "--window", str(bc.window),
            "--duration", str(bc.duration), "--threads", str(threads)]
    if bc.data_dir is not None:
        argv += ["--data-dir", bc.data_dir]
    if bc.image_size is not None:
        argv += ["--image-size", str(bc.image_size)]
    if bc.compile:
        argv += ["--compile", "--compile-mode", bc.compile_mode]
    return argv


class TrialExited(RuntimeError):
    """A packed benchmark trial ended without reporting (its stderr says why)."""


def _read_tagged(proc: subprocess.Popen[str], tag: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(tag):
            return line[len(tag):].strip()
    proc.wait()
    raise TrialExited(f"a benchmark trial exited (code {proc.returncode}) before {tag.strip()}")


def _packed(bc: BenchConfig, k: int, threads: int) -> list[dict[str, float]]:
    """K child trials started together (a barrier after warm-up); their results."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs = [subprocess.Popen(_child_argv(bc, threads), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    try:
        for p in procs:
            _read_tagged(p, "READY")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results: list[dict[str, float]] = [json.loads(_read_tagged(p, "RESULT ")) for p in procs]
        for p in procs:
            p.wait()
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_packing(bc: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One trial alone, ``bc.trials`` packed, one alone again: aggregate images/s and the gain."""
    bc.check()
    say = log or (lambda _: None)
    device = _select_device(bc.device)
    cores = os.cpu_count() or 1
    alone_threads = bc.threads or cores
    packed_threads = bc.threads or max(1, cores // bc.trials)
    say(f"one trial alone ({alone_threads} threads, {bc.duration:g} s)")
    before = _packed(bc, 1, alone_threads)[0]
    say(f"{bc.trials} trials packed ({packed_threads} threads each, {bc.duration:g} s)")
    packed = _packed(bc, bc.trials, packed_threads)
    say("one trial alone again")
    after = _packed(bc, 1, alone_threads)[0]
    single = (before["images_per_s"] + after["images_per_s"]) / 2
    aggregate = sum(r["images_per_s"] for r in packed)
    return {"config": dataclasses.asdict(bc), "device": _device_name(device), "k": bc.trials,
            "single_before": before, "single_after": after, "packed": packed,
            "single_images_per_s": single, "aggregate_images_per_s": aggregate,
            "gain": aggregate / single}


# ------------------------------------------------------------------------------------------------
# Report and command line.


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_report(r: dict[str, Any]) -> str:
    """The result dict of ``run_benchmark`` or ``run_packing`` as a readable table."""
    c = r["config"]
    width = f" (width {c['backbone_width']})" if c["backbone_width"] else ""
    head = (f"{c['method']} / {c['backbone']}{width} on {c['dataset']}, batch {c['batch_size']}, "
            f"compile {c['compile_mode'] if c['compile'] else 'off'}, precision {c['precision']}, "
            f"device {r['device']}")
    if "k" in r:
        lines = [head, f"packing: {r['k']} trials for {c['duration']:g} s each measurement",
                 "", f"{'run':<28}{'threads':>8}{'steps':>8}{'img/s':>10}"]

        def row(name: str, x: dict[str, float]) -> str:
            return f"{name:<28}{x['threads']:>8}{x['steps']:>8}{x['images_per_s']:>10.0f}"

        lines.append(row("one alone (before)", r["single_before"]))
        lines += [row(f"packed trial {i + 1}/{r['k']}", x) for i, x in enumerate(r["packed"])]
        lines.append(row("one alone (after)", r["single_after"]))
        lines += ["", f"aggregate of {r['k']} packed: {r['aggregate_images_per_s']:.0f} img/s; "
                  f"one alone (mean of both): {r['single_images_per_s']:.0f} img/s; "
                  f"gain {r['gain']:.2f}x"]
        return "\n".join(lines)
    d, o, v, bd, cp = r["data"], r["ours"], r["conventional"], r["breakdown"], r["compute"]
    lines = [
        head,
        *([SPIN_NOTE] if r["cpu_threads"] > 1 and r["omp_wait_policy"] is None else []),
        f"data: {d['name']} {d['shape'][0]}x{d['shape'][1]}x{d['shape'][2]}, "
        f"{d['train_images']} training images; each image = 2 views",
        f"protocol: {c['rounds']} rounds, alternating, of {c['window']} timed steps (ours) and "
        f"{r['conventional']['steps'] // c['rounds']} (conventional, from an empty loader queue), "
        f"after {c['warmup']} warm-up steps; conventional: {c['workers']} DataLoader workers",
        "",
        "step = mean step time of a timed window; median and best over the windows",
        f"{'path':<14}{'median step':>13}{'min step':>11}{'img/s median':>14}{'img/s best':>12}"
        f"{'CPU s/step':>12}",
    ]
    for name, x in (("ours", o), ("conventional", v)):
        cpu = "n/a" if x["cpu_s_per_step"] is None else f"{x['cpu_s_per_step']:.3f}"
        lines.append(f"{name:<14}{x['median_step_s'] * 1e3:>10.1f} ms"
                     f"{x['min_step_s'] * 1e3:>8.1f} ms"
                     f"{x['images_per_s_median']:>14.0f}{x['images_per_s_best']:>12.0f}{cpu:>12}")
    lines.append(f"{'ratio ours/conventional':<38}{r['ratio_median']:>13.2f}x"
                 f"{r['ratio_best']:>11.2f}x{_fmt(r['ratio_cpu'], '.2f'):>11}x")
    if v["workers_cpu_s_per_step"] is not None:
        lines.append(f"(conventional CPU s/step: {v['workers_cpu_s_per_step']:.3f} in its "
                     f"{c['workers']} workers, the rest in this process)")
    lines += [
        "",
        f"our step, phases timed back to back ({bd['samples']} samples, medians):",
        f"  {'augmentation (gather + 2 views)':<36}{bd['augment_s'] * 1e3:>9.2f} ms"
        f"{bd['augment_share'] * 100:>7.1f} %",
        f"  {'model (fwd + bwd + optimiser)':<36}{bd['model_s'] * 1e3:>9.2f} ms"
        f"{bd['model_share'] * 100:>7.1f} %",
        f"  {'loss & method extras (remainder)':<36}{bd['loss_s'] * 1e3:>9.2f} ms"
        f"{bd['loss_share'] * 100:>7.1f} %",
        f"  {'full step':<36}{bd['step_s'] * 1e3:>9.2f} ms",
        "",
        f"compute: {_fmt(cp['gflop_per_image'], '.3f')} GFLOP/image (fwd + bwd, 2 views); "
        f"achieved {_fmt(cp['achieved_tflops'], '.3f')} TFLOP/s; peak "
        f"{_fmt(cp['peak_tflops'], '.0f')} TFLOP/s -> bound {_fmt(cp['bound_images_per_s'], '.0f')}"
        f" img/s; fraction of bound {_fmt(cp['fraction_of_bound'], '.3f')}",
    ]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit code 2, as every entry point
        raise ConfigError(message)


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, bool, str | None]:
    """``(config, child mode, json path)`` from the command line."""
    d = BenchConfig()
    p = _Parser(prog="python -m sslsearch.bench", description=__doc__.split("\n\n")[0]
                if __doc__ else None)
    p.add_argument("--method", default=d.method, help="SSL method (default: %(default)s)")
    p.add_argument("--backbone", default=d.backbone,
                   help="small_cnn, resnet18, resnet34, resnet50 (default: %(default)s)")
    p.add_argument("--backbone-width", type=int, default=0,
                   help="small_cnn / mlp width; 0 keeps the default (default: %(default)s)")
    p.add_argument("--dataset", default=d.dataset,
                   help="synthetic (random uint8, no download) or an sslsearch dataset of images "
                        "(digits, fashion_mnist, cifar10, ...) (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic image side (default 32); a dataset is resized only if given")
    p.add_argument("--channels", type=int, default=d.channels,
                   help="synthetic images' channels, 1 or 3 (default: %(default)s)")
    p.add_argument("--optimizer", default=d.optimizer, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone and the augmentation (ours)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, reduce-overhead (CUDA graphs), "
                        "max-autotune, max-autotune-no-cudagraphs (default: %(default)s)")
    p.add_argument("--precision", default=d.precision,
                   help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 (also on CPU) or fp32; "
                        "both paths (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="alternating timed windows per path (default: %(default)s)")
    p.add_argument("--window", type=int, default=d.window,
                   help="timed steps per window (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="untimed steps per path first (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="conventional path's DataLoader workers (default: %(default)s)")
    p.add_argument("--trials", type=int, default=0,
                   help="K > 0: instead, K trials packed on the device against one alone")
    p.add_argument("--duration", type=float, default=d.duration,
                   help="seconds per packing measurement (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's; packing: cores / K)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s (default: known GPUs by name)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bc = BenchConfig(method=a.method, backbone=a.backbone, backbone_width=a.backbone_width,
                     dataset=a.dataset,
                     data_dir=a.data_dir, batch_size=a.batch_size, image_size=a.image_size,
                     channels=a.channels, optimizer=a.optimizer, device=a.device,
                     compile=a.compile, compile_mode=a.compile_mode, precision=a.precision,
                     rounds=a.rounds,
                     window=a.window, warmup=a.warmup,
                     workers=a.workers, trials=a.trials, duration=a.duration, threads=a.threads,
                     peak_tflops=a.peak_tflops)
    bc.check()
    bc.trial()  # method, backbone name checks and the like, before any work
    return bc, a.child, a.json


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["search"]:  # the search benchmark: python -m sslsearch.bench search --help
        from sslsearch.bench_search import main as search_main

        return search_main(args[1:])
    try:
        bc, child, json_path = parse_args(args)
        if bc.threads:
            torch.set_num_threads(bc.threads)
        if child:
            return _child(bc)

        def say(msg: str) -> None:
            print(f"  .. {msg}", file=sys.stderr, flush=True)

        result = run_packing(bc, say) if bc.trials > 0 else run_benchmark(bc, say)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrialExited as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(result), flush=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
