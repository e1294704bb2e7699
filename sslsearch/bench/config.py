"""What one throughput benchmark runs (:class:`BenchConfig`) and the constants of its protocol."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sslsearch.config import TrialConfig, trial_config
from sslsearch.data import DATASETS
from sslsearch.errors import ConfigError
from sslsearch.parts.networks import BACKBONES

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


CONVENTIONAL_PRECISIONS = ("library", "same", "bf16", "fp32")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how; ``check`` gives one-line errors for values out of range."""

    # The trial's settings, defaulting to TrialConfig's (one place for each default).
    method: str = TrialConfig.method
    backbone: str = TrialConfig.backbone
    backbone_width: int = TrialConfig.backbone_width  # 0: the architecture's default width
    dataset: str = "synthetic"  # or any sslsearch.data dataset of images
    data_dir: str | None = TrialConfig.data_dir
    batch_size: int = TrialConfig.batch_size
    image_size: int | None = TrialConfig.image_size  # synthetic: 32; a dataset: its own size
    channels: int = 3  # synthetic data only
    optimizer: str = TrialConfig.optimizer
    device: str = TrialConfig.device
    compile: bool = TrialConfig.compile
    compile_mode: str = TrialConfig.compile_mode
    precision: str = TrialConfig.precision  # ours: the training loop's rule (trial.uses_bf16)
    # The conventional path's precision: "library" (default) runs it as the public SSL libraries
    # do by default: bf16/fp16 autocast on CUDA (their AMP recipes), float32 on the CPU (e.g.
    # Lightning's precision="32-true"); "same": ours' precision (the paths then differ only in where
    # the views come from); "bf16" or "fp32": that, on any device.
    conventional_precision: str = "library"
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
        need(self.conventional_precision in CONVENTIONAL_PRECISIONS, "conventional-precision",
             self.conventional_precision, ", ".join(CONVENTIONAL_PRECISIONS))
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
