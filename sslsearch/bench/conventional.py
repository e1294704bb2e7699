"""The conventional path: PIL images, torchvision ``transforms.v2`` per sample in DataLoader
workers, the batch copied to the device, then the identical step."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from sslsearch.bench.config import DRAIN_WAIT_S, PREFETCH_FACTOR
from sslsearch.bench.ours import Setup, model_step
from sslsearch.bench.timing import proc_cpu_s
from sslsearch.data import Split
from sslsearch.trial.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentConfig,
)
from sslsearch.trial.imageops import blur_kernel_size


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
        jitter = v2.ColorJitter(BRIGHTNESS * s, CONTRAST * s, SATURATION * s, min(0.5, HUE * s))
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


def conventional_bf16(precision: str, s: Setup) -> bool:
    """Whether the conventional path autocasts to bf16, per ``BenchConfig.conventional_precision``:
    ``library`` as the public libraries' defaults (autocast on CUDA only), ``same`` as ours."""
    if precision == "library":
        return s.device.type == "cuda"
    if precision == "same":
        return s.trial.bf16
    return precision == "bf16"


class ConventionalPath:
    """A DataLoader with worker processes feeding the identical model step."""

    def __init__(self, s: Setup, workers: int, *, bf16: bool) -> None:
        self.s = s
        self.bf16 = bf16  # autocast in the model step (conventional_bf16)
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
        # The identical step: the model is channels_last (trial.setup_trial), so are its inputs.
        x1 = x1.contiguous(memory_format=torch.channels_last)
        x2 = x2.contiguous(memory_format=torch.channels_last)
        return x1, x2, y

    def step(self) -> None:
        model_step(self.s, *self.batch(), bf16=self.bf16)

    def workers_cpu_s(self) -> float | None:
        """CPU seconds the loader's worker processes have used so far (None off Linux)."""
        workers = getattr(self._it, "_workers", [])  # the iterator's processes (private attr.)
        total = 0.0
        for w in workers:
            t = proc_cpu_s(w.pid)
            if t is None:
                return None
            total += t
        return total

    def close(self) -> None:
        """End the worker processes (they belong to the iterator)."""
        self._it = iter(())
        del self.loader
