"""The splits a trial trains and evaluates on: resident on its device (:class:`Split`) or decoded
batch by batch from an ImageFolder too large to keep (:class:`StreamingSplit`), and the bundle of
the three (:class:`DataBundle`)."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from sslsearch.errors import ConfigError

Kind = Literal["image", "tabular"]


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} is invalid; expected a positive integer")


def draw_seed(generator: torch.Generator | None) -> int:
    """One 62-bit seed from ``generator`` (or torch's global RNG): one host sync per epoch."""
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def num_workers(n_items: int, batch_size: int) -> int:
    """DataLoader workers for decoding images: at most 4 (more rarely helps and starves trials
    sharing the host), and none for a single batch, where a worker only adds its start-up time."""
    n_batches = -(-n_items // batch_size)
    return 0 if n_batches <= 1 else min(4, os.cpu_count() or 1, n_batches)


@dataclass(eq=False)
class Split:
    """A labelled split resident on one device; a batch is an index gather, never a host copy.

    ``x`` is uint8 ``N x C x H x W`` (0..255) for images or float32 ``N x F`` (standardised with
    training statistics) for tables; ``y`` is int64 ``N``.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0] or self.x.device != self.y.device:
            raise ValueError(
                f"x ({tuple(self.x.shape)} on {self.x.device}) and y ({tuple(self.y.shape)} on "
                f"{self.y.device}) must have the same length and device"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def iter_batches(self, batch_size: int, generator: torch.Generator | None, *, shuffle: bool,
                     drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches; shuffled with ``generator`` (on its device) when asked."""
        check_batch_size(batch_size)
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        if not shuffle:
            return self._slices(batch_size, stop)
        if generator is None:
            order = torch.randperm(n, device=self.x.device)
        else:
            # One permutation per epoch; a generator on another device costs one copy, not one
            # per batch.
            order = torch.randperm(n, generator=generator, device=generator.device)
            order = order.to(self.x.device)
        return self._gathers(order, batch_size, stop)

    def _slices(self, batch_size: int, stop: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, stop, batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def _gathers(
        self, order: Tensor, batch_size: int, stop: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], self.y[idx]


class StreamingSplit:
    """A labelled ImageFolder split decoded batch by batch by CPU DataLoader workers.

    Only for ImageFolders too large to keep resident: each uint8 ``B x 3 x H x W`` batch is moved
    to ``device`` (pinned, non-blocking on CUDA); augmentation still happens on the device.
    """

    def __init__(self, dataset: Any, indices: Tensor, device: torch.device) -> None:
        from torch.utils.data import Subset

        self._dataset: Any = Subset(dataset, indices.tolist())
        self._len = int(indices.numel())
        self.device = device

    def __len__(self) -> int:
        return self._len

    def listing(self) -> Iterator[tuple[str, int]]:
        """``(file, label)`` of each row, in order: what identifies a split too large to read
        whole (:func:`sslsearch.data.digest.dataset_digest`). The dataset must list its files
        (``files`` and ``labels``, as an ImageFolder's does)."""
        dataset = self._dataset.dataset
        files, labels = getattr(dataset, "files", None), getattr(dataset, "labels", None)
        if files is None or labels is None:
            raise TypeError(f"{type(dataset).__name__} does not list its files")
        for i in self._dataset.indices:
            yield str(files[i]), int(labels[i])

    def iter_batches(self, batch_size: int, generator: torch.Generator | None, *, shuffle: bool,
                     drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches on ``device``; the order is seeded from ``generator``."""
        check_batch_size(batch_size)
        # Always hand the DataLoader its own generator: without one it draws its worker seed from
        # torch's global RNG, which would shift every later random draw of the trial.
        seed = draw_seed(generator) if shuffle else 0
        return self._batches(self._loader(batch_size, shuffle, drop_last, seed))

    def _loader(self, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            self._dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers(self._len, batch_size),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )

    def _batches(self, loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


@dataclass(frozen=True)
class DataBundle:
    """A dataset's train / val / test splits and the facts a model needs about them."""

    name: str
    kind: Kind
    train: Split | StreamingSplit  # training set minus the held-out validation split
    val: Split | StreamingSplit  # stratified, seeded hold-out of the training set
    test: Split | StreamingSplit  # official test split: only ever reported
    num_classes: int
    in_channels: int  # images: 1 or 3; tabular: number of features
    image_size: int  # images: H (= W); tabular: 0
    mean: tuple[float, ...]  # per-channel mean of train images in [0, 1] units; tabular: ()
    std: tuple[float, ...]
    # False: no class labels (an ImageFolder without class folders): y is all 0, the test split
    # is empty, and only label-free metrics judge the encoder.
    labeled: bool = True
