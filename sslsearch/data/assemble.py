"""From a dataset's official train / test tensors to a :class:`~sslsearch.data.splits.DataBundle`:
the seeded, stratified validation hold-out (and training subset), per-channel statistics,
resizing, tabular standardisation and label checks."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sslsearch.data.splits import DataBundle, Split
from sslsearch.errors import ConfigError

# Datasets without an official test split get this fixed one, independent of the trial's seed.
TEST_FRACTION = 0.2
TEST_SEED = 0


@dataclass(frozen=True)
class Options:
    val_fraction: float
    seed: int
    max_train_samples: int | None
    image_size: int | None
    device: torch.device


@dataclass(frozen=True)
class Raw:
    """Official train / test tensors on the CPU, before the validation split; ``val_x`` and
    ``val_y`` only where the dataset defines its own validation split (Speech Commands'
    validation_list.txt), which is then kept instead of a hold-out drawn from ``train``."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    val_x: Tensor | None = None
    val_y: Tensor | None = None


def allocate(counts: Sequence[int], n: int, caps: Sequence[int]) -> list[int]:
    """Per-class sample numbers summing to ``n`` (as far as ``caps`` allow), proportional to
    ``counts``.

    Largest-remainder rounding keeps the total exact. When ``n`` covers every class that can
    spare a sample, each such class gets at least one, so a small validation split sees them all.
    """
    total = sum(counts)
    quota = [n * c / total for c in counts]
    alloc = [min(int(q), cap) for q, cap in zip(quota, caps, strict=True)]
    spare = [i for i, cap in enumerate(caps) if cap > 0]
    if n >= len(spare):
        for i in spare:
            alloc[i] = max(alloc[i], 1)
    # Ties go to the lower class index so the allocation is deterministic.
    order = sorted(range(len(counts)), key=lambda i: (int(quota[i]) - quota[i], i))
    deficit = n - sum(alloc)
    while deficit > 0:
        grew = False
        for i in order:
            if deficit > 0 and alloc[i] < caps[i]:
                alloc[i] += 1
                deficit -= 1
                grew = True
        if not grew:
            break  # every class is at its cap: fewer than n can be taken
    while deficit < 0:
        # The at-least-one rule overshot: take back from the class most above its quota.
        shrinkable = [i for i in range(len(counts)) if alloc[i] > 1]
        i = max(shrinkable, key=lambda j: (alloc[j] - quota[j], -j))
        alloc[i] -= 1
        deficit += 1
    return alloc


def stratified_pick(y: Tensor, n: int, *, keep_one: bool, rng: torch.Generator) -> Tensor:
    """Sorted indices of ``n`` rows of ``y``, drawn per class in proportion to its size.

    ``keep_one`` leaves at least one row of every class unpicked (for hold-outs).
    """
    if y.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    counts = [int(c) for c in torch.bincount(y).tolist()]
    caps = [max(c - 1, 0) if keep_one else c for c in counts]
    # One stable sort groups each class's rows contiguously (in file order), instead of one
    # full scan of y per class.
    by_class = torch.argsort(y, stable=True)
    picked = []
    start = 0
    for count, k in zip(counts, allocate(counts, n, caps), strict=True):
        members = by_class[start : start + count]
        picked.append(members[torch.randperm(count, generator=rng)[:k]])
        start += count
    return torch.sort(torch.cat(picked)).values


def held_count(n: int, fraction: float) -> int:
    """How many of ``n`` rows a hold-out of ``fraction`` asks for (at least one)."""
    return max(1, round(fraction * n))


def split_off(y: Tensor, fraction: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified ``(rest, held)`` index tensors, ``held`` being ``fraction`` of the rows."""
    held = stratified_pick(y, held_count(y.numel(), fraction), keep_one=True, rng=rng)
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def train_val_indices(name: str, y: Tensor, opts: Options) -> tuple[Tensor, Tensor]:
    """Validation hold-out (seeded by ``opts.seed``), then the optional training subset."""
    rng = torch.Generator().manual_seed(opts.seed)
    train, val = split_off(y, opts.val_fraction, rng)
    if val.numel() == 0:
        raise ConfigError(
            f"dataset {name} has {y.numel()} training samples: too few to hold out "
            f"val_fraction={opts.val_fraction}"
        )
    return train_subset(y, train, opts.max_train_samples, rng), val


def train_subset(y: Tensor, rows: Tensor, max_samples: int | None, rng: torch.Generator) -> Tensor:
    """``rows`` of ``y``, or a stratified draw of ``max_samples`` of them when fewer are asked."""
    if max_samples is not None and max_samples < rows.numel():
        rows = rows[stratified_pick(y[rows], max_samples, keep_one=False, rng=rng)]
    return rows


def train_val_split(name: str, raw: Raw, opts: Options) -> tuple[Tensor, Tensor, Tensor]:
    """The training rows of ``raw.train_x`` and the validation split ``(x, y)``: the dataset's
    own (then only ``max_train_samples`` draws, seeded by ``opts.seed``, and ``val_fraction`` is
    unused), or :func:`train_val_indices`' hold-out."""
    if raw.val_x is not None and raw.val_y is not None:
        rows = torch.arange(raw.train_y.numel())
        rng = torch.Generator().manual_seed(opts.seed)
        return train_subset(raw.train_y, rows, opts.max_train_samples, rng), raw.val_x, raw.val_y
    train, val = train_val_indices(name, raw.train_y, opts)
    return train, raw.train_x[val], raw.train_y[val]


def split_sizes(counts: Sequence[int], val_fraction: float, max_train_samples: int | None
                ) -> tuple[list[int], list[int]]:
    """Per class, how many training and validation rows :func:`train_val_indices` gives a
    training set with ``counts`` rows per class: the same allocation, without the rows (the
    draw decides which rows, never how many), so a folder can be judged from its counts."""
    caps = [max(c - 1, 0) for c in counts]
    val = allocate(counts, held_count(sum(counts), val_fraction), caps) if sum(counts) else caps
    train = [c - v for c, v in zip(counts, val, strict=True)]
    if max_train_samples is not None and max_train_samples < sum(train):
        train = allocate(train, max_train_samples, train)
    return train, val


# ----------------------------------------------------------------------------- assembly


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of uint8 images (via 256-bin histograms,
    which avoids a float copy of the whole set)."""
    return hist_stats(histograms(x))


def histograms(x: Tensor) -> Tensor:
    """Per-channel 256-bin histograms (C x 256, int64) of uint8 images N x C x H x W."""
    return torch.stack(
        [torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]
    )


def hist_stats(hist: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    levels = torch.arange(256, dtype=torch.float64) / 255
    h = hist.to(torch.float64)
    n = h.sum(dim=1)
    mean = (h * levels).sum(dim=1) / n
    var = ((h * levels**2).sum(dim=1) / n - mean**2).clamp_min(0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def resize(x: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of uint8 square images, in chunks to bound float memory."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], 1024):
        chunk = x[start : start + 1024].to(torch.float32)
        resized = torch.nn.functional.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + 1024] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def image_bundle(name: str, raw: Raw, opts: Options) -> DataBundle:
    train_idx, val_x, val_y = train_val_split(name, raw, opts)
    xs = [raw.train_x[train_idx], val_x, raw.test_x]
    if opts.image_size is not None:
        xs = [resize(x, opts.image_size) for x in xs]
    mean, std = channel_stats(xs[0])
    ys = [raw.train_y[train_idx], val_y, raw.test_y]
    train, val, test = (
        Split(x.to(opts.device), y.to(opts.device)) for x, y in zip(xs, ys, strict=True)
    )
    return DataBundle(name=name, kind="image", train=train, val=val, test=test,
                      num_classes=raw.num_classes, in_channels=int(xs[0].shape[1]),
                      image_size=int(xs[0].shape[-1]), mean=mean, std=std)


def tabular_bundle(name: str, raw: Raw, opts: Options) -> DataBundle:
    train_idx, val_x, val_y = train_val_split(name, raw, opts)
    train_x = raw.train_x[train_idx].to(torch.float64)
    mu = train_x.mean(dim=0)
    sigma = train_x.std(dim=0, unbiased=False)
    # A constant feature (e.g. digits' always-blank corner pixels) carries nothing: dividing by
    # 1 keeps it at 0 instead of producing NaN.
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))

    def standardise(x: Tensor) -> Tensor:
        return ((x.to(torch.float64) - mu) / sigma).to(torch.float32).to(opts.device)

    ys = [raw.train_y[train_idx], val_y, raw.test_y]
    xs = [train_x, val_x, raw.test_x]
    train, val, test = (
        Split(standardise(x), y.to(opts.device)) for x, y in zip(xs, ys, strict=True)
    )
    return DataBundle(name=name, kind="tabular", train=train, val=val, test=test,
                      num_classes=raw.num_classes, in_channels=int(train_x.shape[1]), image_size=0,
                      mean=(), std=())


def check_labels(path: Path | str, y: Tensor, num_classes: int, n: int) -> Tensor:
    if y.numel() != n:
        raise ConfigError(f"{path} holds {y.numel()} labels for {n} images; expected one per image")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"{path} holds labels {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1}"
        )
    return y
