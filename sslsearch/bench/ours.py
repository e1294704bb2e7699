"""Our path: the dataset resident on the device, both views augmented batched on it, the training
loop's own step (:func:`sslsearch.trial.trial.train_step`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from sslsearch.bench.config import SYNTHETIC_SIZE, BenchConfig
from sslsearch.data import DataBundle, Split
from sslsearch.errors import ConfigError
from sslsearch.methods.base import Step
from sslsearch.trial.augment import (
    AugmentConfig,
)
from sslsearch.trial.trial import (
    LiveTrial,
    augment_configs,
    load_data,
    select_device,
    setup_trial,
    train_batches,
    train_step,
    trial_optimizer,
    two_views,
)

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
class Setup:
    """The live objects one benchmark process trains with."""

    trial: LiveTrial
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


def setup(bc: BenchConfig) -> Setup:
    """Data on the device, the method, its optimiser and augmentations, as ``train.run`` has them.

    One difference: the learning rate stays at its peak (no schedule), which costs nothing anyway.
    """
    cfg = bc.trial()
    device = select_device(cfg.device)
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
    augs = augment_configs(cfg, data.image_size, trial.method)
    return Setup(trial, optimizer, augs, gen, bc.batch_size)


def model_step(s: Setup, x1: Tensor, x2: Tensor, y: Tensor, *, bf16: bool | None = None
               ) -> dict[str, Tensor]:
    """One optimiser step on two views: ``trial.train_step``, the body of ``train.run``'s loop
    (minus the LR schedule, which costs nothing); ``bf16`` None: the trial's precision."""
    return train_step(s.trial, s.optimizer, x1, x2, y, s.next_step(), bf16=bf16)


class OursPath:
    """Batches gathered from the resident uint8 data, both views augmented on the device."""

    def __init__(self, s: Setup) -> None:
        self.s = s
        self._it = train_batches(s.trial, s.gen, s.batch_size)

    def batch(self) -> tuple[Tensor, Tensor]:
        try:
            return next(self._it)
        except StopIteration:  # a new epoch: a new permutation
            self._it = train_batches(self.s.trial, self.s.gen, self.s.batch_size)
            return next(self._it)

    def views(self) -> tuple[Tensor, Tensor, Tensor]:
        x, y = self.batch()
        x1, x2 = two_views(self.s.trial, x, self.s.augs, self.s.gen)
        return x1, x2, y

    def step(self) -> None:
        model_step(self.s, *self.views())

    def model_only(self, x1: Tensor, x2: Tensor) -> None:
        """Encoder + projector forward on both views, a trivial loss, backward, optimiser step."""
        method = self.s.trial.method
        with self.s.trial.autocast():
            loss = method.embed(x1).float().mean() + method.embed(x2).float().mean()
        self.s.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.s.optimizer.step()


# ------------------------------------------------------------------------------------------------
# The conventional path: torchvision transforms per sample in DataLoader workers.
