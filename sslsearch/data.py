"""Datasets as uint8 image tensors (or float32 feature tables) resident on the trial's device.

Every loader returns a :class:`DataBundle` with three splits:

* ``train``: the official training set minus ``val`` (optionally a stratified subset of it);
* ``val``: a stratified, seeded hold-out of the training set, where hyperparameters are selected;
* ``test``: the official test split, only ever reported. Datasets without one (digits, CovType)
  get a fixed stratified 20 % test split drawn with seed 0, so it is the same in every trial.

Files are read in each dataset's own on-disk format (idx, CIFAR pickles, STL-10 binaries,
ImageFolder) rather than through torchvision's dataset classes, which refuse files whose md5
differs: that keeps tiny test fixtures working. torchvision is only used to download, and to list
and decode ImageFolders. numpy, scikit-learn and torchvision are imported lazily, so the training
loop imports this module on a machine with nothing but torch installed.

Bad user input (unknown name, missing or corrupt files, out-of-range options) raises
:class:`~sslsearch.errors.ConfigError` with a one-line message naming the dataset, field or path.
"""

import contextlib
import functools
import gzip
import importlib
import os
import pickle
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sslsearch.errors import ConfigError

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIRS",
    "DataBundle",
    "Kind",
    "Split",
    "StreamingSplit",
    "load_dataset",
    "load_dataset_cached",
]

Kind = Literal["image", "tabular"]

DATASETS: tuple[str, ...] = (
    "digits",
    "digits_tabular",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "stl10",
    "imagefolder",
    "covtype",
)

# Used when data_dir is None. Debian's dataset-fashion-mnist installs the four idx .gz files here.
DEFAULT_DATA_DIRS: dict[str, str] = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

# Datasets without an official test split get this fixed one, independent of the trial's seed.
_TEST_FRACTION = 0.2
_TEST_SEED = 0
_IMAGEFOLDER_SIZE = 64  # default side length for ImageFolder images (resize + centre crop)
_STATS_SAMPLES = 10_000  # streaming splits estimate mean/std from at most this many train images
_DECODE_BATCH = 256  # images per DataLoader batch when decoding an ImageFolder into memory

_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"{_CIFAR10_DIR}/data_batch_{i}" for i in range(1, 6))
_CIFAR100_DIR = "cifar-100-python"
_STL10_DIR = "stl10_binary"
_STL10_SIDE = 96


# ----------------------------------------------------------------------------- splits


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} is invalid; expected a positive integer")


def _draw_seed(generator: torch.Generator | None) -> int:
    """One 62-bit seed from ``generator`` (or torch's global RNG): one host sync per epoch."""
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _num_workers(n_items: int, batch_size: int) -> int:
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

    def iter_batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        *,
        shuffle: bool,
        drop_last: bool,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches; shuffled with ``generator`` (on its device) when asked."""
        _check_batch_size(batch_size)
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

    def iter_batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        *,
        shuffle: bool,
        drop_last: bool,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches on ``device``; the order is seeded from ``generator``."""
        _check_batch_size(batch_size)
        # Always hand the DataLoader its own generator: without one it draws its worker seed from
        # torch's global RNG, which would shift every later random draw of the trial.
        seed = _draw_seed(generator) if shuffle else 0
        return self._batches(self._loader(batch_size, shuffle, drop_last, seed))

    def _loader(self, batch_size: int, shuffle: bool, drop_last: bool, seed: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            self._dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=_num_workers(self._len, batch_size),
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
    supervised_labels_available: bool = True


# ----------------------------------------------------------------------------- entry points


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_train_samples: int | None = None,
    image_size: int | None = None,
    max_resident_bytes: int = 4 * 2**30,
) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) onto ``device``.

    ``seed`` draws the validation split (``val_fraction`` of the training set, stratified) and the
    ``max_train_samples`` subset; the test split never depends on it. ``image_size`` resizes
    images (ImageFolder default 64). An ImageFolder larger than ``max_resident_bytes`` streams.
    """
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    _check_options(name, val_fraction, max_train_samples, image_size, max_resident_bytes)
    dev = _resolve_device(device)
    if data_dir is None and name in DEFAULT_DATA_DIRS:
        data_dir = DEFAULT_DATA_DIRS[name]
    root = None if data_dir is None else Path(data_dir).expanduser()
    opts = _Options(val_fraction, seed, max_train_samples, image_size, dev)

    if name == "imagefolder":
        return _load_imagefolder(_need_root(name, root), download, opts, max_resident_bytes)
    if name in ("digits", "digits_tabular"):
        images, features, labels = _read_digits()
        rest, test = _split_off(labels, _TEST_FRACTION, torch.Generator().manual_seed(_TEST_SEED))
        table = features if name == "digits_tabular" else images
        raw = _Raw(table[rest], labels[rest], table[test], labels[test], num_classes=10)
        if name == "digits_tabular":
            return _tabular_bundle(name, raw, opts)
        return _image_bundle(name, raw, opts)
    if name == "covtype":
        return _tabular_bundle(name, _read_covtype(root, download), opts)
    readers: dict[str, Callable[[Path, bool], _Raw]] = {
        "fashion_mnist": _read_fashion_mnist,
        "cifar10": _read_cifar10,
        "cifar100": _read_cifar100,
        "stl10": _read_stl10,
    }
    return _image_bundle(name, readers[name](_need_root(name, root), download), opts)


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str,
    data_dir: str | None,
    download: bool,
    val_fraction: float,
    seed: int,
    device: str,
    max_train_samples: int | None,
    image_size: int | None,
    max_resident_bytes: int,
) -> DataBundle:
    return load_dataset(
        name,
        data_dir=data_dir,
        download=download,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        max_train_samples=max_train_samples,
        image_size=image_size,
        max_resident_bytes=max_resident_bytes,
    )


def load_dataset_cached(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_train_samples: int | None = None,
    image_size: int | None = None,
    max_resident_bytes: int = 4 * 2**30,
) -> DataBundle:
    """:func:`load_dataset`, memoised per process so a worker running many trials loads once.

    The bundle is shared: callers must not modify its tensors in place.
    """
    # Trials chdir into their own folders: key on the absolute path so every trial hits one entry.
    resolved = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    return _load_cached(
        name,
        resolved,
        download,
        val_fraction,
        seed,
        str(_resolve_device(device)),
        max_train_samples,
        image_size,
        max_resident_bytes,
    )


# ----------------------------------------------------------------------------- option checks


@dataclass(frozen=True)
class _Options:
    val_fraction: float
    seed: int
    max_train_samples: int | None
    image_size: int | None
    device: torch.device


@dataclass(frozen=True)
class _Raw:
    """Official train / test tensors on the CPU, before the validation split."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


def _check_options(
    name: str,
    val_fraction: float,
    max_train_samples: int | None,
    image_size: int | None,
    max_resident_bytes: int,
) -> None:
    if not 0.0 < val_fraction <= 0.5:
        raise ConfigError(
            f"val_fraction {val_fraction!r} for {name} is out of range; expected 0 < val_fraction "
            "<= 0.5"
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise ConfigError(
            f"max_train_samples {max_train_samples!r} for {name} is invalid; expected a positive "
            "integer or null (use the whole training split)"
        )
    if image_size is not None:
        if name in ("digits_tabular", "covtype"):
            raise ConfigError(
                f"image_size {image_size!r} does not apply to {name}: it is a tabular dataset; "
                "leave image_size null"
            )
        if image_size < 1:
            raise ConfigError(
                f"image_size {image_size!r} for {name} is invalid; expected a positive integer"
            )
    if max_resident_bytes < 0:
        raise ConfigError(
            f"max_resident_bytes {max_resident_bytes!r} for {name} is invalid; expected >= 0"
        )


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(
            f"device {device!r} is not a torch device; expected e.g. cpu, cuda, cuda:1"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asks for CUDA, which this machine does not have")
    return dev


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _need_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError(
            f"dataset {name!r} needs data_dir: the folder that holds (or, with download: true, "
            "will hold) its files"
        )
    return root


def _prepare_dir(
    name: str, root: Path, download: bool, expected: str, hint: str = "or pass download: true"
) -> None:
    """Fail early on a data_dir that is absent or not a folder; create it when downloading."""
    if root.is_dir():
        return
    if root.exists():
        raise ConfigError(f"data_dir '{root}' for {name} is not a directory; expected {expected}")
    if not download:
        raise ConfigError(
            f"data_dir '{root}' for {name} does not exist; expected {expected} ({hint})"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"data_dir '{root}' for {name} cannot be created: {_one_line(err)}"
        ) from err


def _missing(name: str, root: Path, what: str, expected: str, hint: str) -> ConfigError:
    """The error for a data_dir lacking ``what`` (one file) out of ``expected`` (the layout)."""
    if root.is_dir() and not any(root.iterdir()):
        return ConfigError(f"data_dir '{root}' for {name} is empty; expected {expected} ({hint})")
    return ConfigError(f"data_dir '{root}' for {name} is missing {what} ({hint})")


DOWNLOAD_LOCK = ".sslsearch-download.lock"


@contextlib.contextmanager
def download_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.sslsearch-download.lock`` (blocking).

    Trials starting together on one node (or on several nodes sharing ``data_dir`` over NFS, where
    POSIX locks reach the server) would each fetch the same archive into the same folder; under the
    lock the first one downloads and the others, finding the files checked and in place, do not.
    """
    import fcntl  # POSIX only, like Ray's multi-node support

    with open(root / DOWNLOAD_LOCK, "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Run a download into ``root`` under :func:`download_lock`, once per folder at a time,
    turning its failures into one-line errors. ``fetch`` must skip files already present and
    verified (torchvision's ``download=True`` and scikit-learn's fetchers do)."""
    try:
        with download_lock(root):
            fetch()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(
            f"could not download {name} into data_dir '{root}': {_one_line(err)}"
        ) from err


# ----------------------------------------------------------------------------- stratification


def _allocate(counts: Sequence[int], n: int, caps: Sequence[int]) -> list[int]:
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


def _stratified_pick(y: Tensor, n: int, *, keep_one: bool, rng: torch.Generator) -> Tensor:
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
    for count, k in zip(counts, _allocate(counts, n, caps), strict=True):
        members = by_class[start : start + count]
        picked.append(members[torch.randperm(count, generator=rng)[:k]])
        start += count
    return torch.sort(torch.cat(picked)).values


def _split_off(y: Tensor, fraction: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified ``(rest, held)`` index tensors, ``held`` being ``fraction`` of the rows."""
    held = _stratified_pick(y, max(1, round(fraction * y.numel())), keep_one=True, rng=rng)
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def _train_val_indices(name: str, y: Tensor, opts: _Options) -> tuple[Tensor, Tensor]:
    """Validation hold-out (seeded by ``opts.seed``), then the optional training subset."""
    rng = torch.Generator().manual_seed(opts.seed)
    train, val = _split_off(y, opts.val_fraction, rng)
    if val.numel() == 0:
        raise ConfigError(
            f"dataset {name} has {y.numel()} training samples: too few to hold out "
            f"val_fraction={opts.val_fraction}"
        )
    if opts.max_train_samples is not None and opts.max_train_samples < train.numel():
        keep = _stratified_pick(y[train], opts.max_train_samples, keep_one=False, rng=rng)
        train = train[keep]
    return train, val


# ----------------------------------------------------------------------------- assembly


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of uint8 images (via 256-bin histograms,
    which avoids a float copy of the whole set)."""
    return _hist_stats(_histograms(x))


def _histograms(x: Tensor) -> Tensor:
    """Per-channel 256-bin histograms (C x 256, int64) of uint8 images N x C x H x W."""
    return torch.stack(
        [torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]
    )


def _hist_stats(hist: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    levels = torch.arange(256, dtype=torch.float64) / 255
    h = hist.to(torch.float64)
    n = h.sum(dim=1)
    mean = (h * levels).sum(dim=1) / n
    var = ((h * levels**2).sum(dim=1) / n - mean**2).clamp_min(0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def _resize(x: Tensor, size: int) -> Tensor:
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


def _image_bundle(name: str, raw: _Raw, opts: _Options) -> DataBundle:
    train_idx, val_idx = _train_val_indices(name, raw.train_y, opts)
    xs = [raw.train_x[train_idx], raw.train_x[val_idx], raw.test_x]
    if opts.image_size is not None:
        xs = [_resize(x, opts.image_size) for x in xs]
    mean, std = _channel_stats(xs[0])
    ys = [raw.train_y[train_idx], raw.train_y[val_idx], raw.test_y]
    train, val, test = (
        Split(x.to(opts.device), y.to(opts.device)) for x, y in zip(xs, ys, strict=True)
    )
    return DataBundle(
        name=name,
        kind="image",
        train=train,
        val=val,
        test=test,
        num_classes=raw.num_classes,
        in_channels=int(xs[0].shape[1]),
        image_size=int(xs[0].shape[-1]),
        mean=mean,
        std=std,
    )


def _tabular_bundle(name: str, raw: _Raw, opts: _Options) -> DataBundle:
    train_idx, val_idx = _train_val_indices(name, raw.train_y, opts)
    train_x = raw.train_x[train_idx].to(torch.float64)
    mu = train_x.mean(dim=0)
    sigma = train_x.std(dim=0, unbiased=False)
    # A constant feature (e.g. digits' always-blank corner pixels) carries nothing: dividing by
    # 1 keeps it at 0 instead of producing NaN.
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))

    def standardise(x: Tensor) -> Tensor:
        return ((x.to(torch.float64) - mu) / sigma).to(torch.float32).to(opts.device)

    ys = [raw.train_y[train_idx], raw.train_y[val_idx], raw.test_y]
    xs = [train_x, raw.train_x[val_idx], raw.test_x]
    train, val, test = (
        Split(standardise(x), y.to(opts.device)) for x, y in zip(xs, ys, strict=True)
    )
    return DataBundle(
        name=name,
        kind="tabular",
        train=train,
        val=val,
        test=test,
        num_classes=raw.num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=0,
        mean=(),
        std=(),
    )


def _check_labels(path: Path | str, y: Tensor, num_classes: int, n: int) -> Tensor:
    if y.numel() != n:
        raise ConfigError(f"{path} holds {y.numel()} labels for {n} images; expected one per image")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"{path} holds labels {int(y.min())}..{int(y.max())}; expected 0..{num_classes - 1}"
        )
    return y


# ----------------------------------------------------------------------------- digits, covtype


def _import_sklearn_datasets(name: str) -> Any:
    try:
        return importlib.import_module("sklearn.datasets")
    except ImportError as err:
        raise ConfigError(
            f"dataset {name!r} needs scikit-learn, which is not installed (pip install "
            "scikit-learn)"
        ) from err


def _read_digits() -> tuple[Tensor, Tensor, Tensor]:
    """sklearn's bundled 8x8 digits: uint8 images, float64 features (0..16) and labels."""
    digits = _import_sklearn_datasets("digits").load_digits()
    features = torch.as_tensor(digits.data, dtype=torch.float64)  # N x 64, values 0..16
    # 0..16 -> 0..255 with integer arithmetic, so 16 maps exactly to 255.
    images = (features.to(torch.int64) * 255 // 16).to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images, features, labels


def _read_covtype(root: Path | None, download: bool) -> _Raw:
    """scikit-learn's CovType (581,012 x 54, classes 1..7 -> 0..6) with a fixed test split."""
    datasets = _import_sklearn_datasets("covtype")
    where = "scikit-learn's default data home" if root is None else f"data_dir '{root}'"
    if root is not None:
        _prepare_dir("covtype", root, download, "scikit-learn's covertype cache")
    lock = download_lock(root) if root is not None and download else contextlib.nullcontext()
    try:
        with lock:
            bunch = datasets.fetch_covtype(
                data_home=None if root is None else str(root), download_if_missing=download
            )
    except OSError as err:
        if not download:
            raise ConfigError(
                f"covtype is not cached in {where}; pass download: true to fetch it (about 11 MB)"
            ) from err
        raise ConfigError(f"could not download covtype into {where}: {_one_line(err)}") from err
    features = torch.as_tensor(bunch.data, dtype=torch.float64)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64) - 1
    _check_labels(f"covtype in {where}", labels, 7, features.shape[0])
    rest, test = _split_off(labels, _TEST_FRACTION, torch.Generator().manual_seed(_TEST_SEED))
    return _Raw(features[rest], labels[rest], features[test], labels[test], num_classes=7)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_folder(root: Path) -> Path | None:
    """The folder holding all four idx files: root itself, or torchvision's download layout."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        if all(_idx_file(folder, stem) is not None for stem in _FASHION_FILES):
            return folder
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> Tensor:
    """A uint8 idx file (optionally gzipped), checking its magic number and declared size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path} is not a readable idx file: {_one_line(err)}") from err
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path} holds {len(raw)} bytes: it is truncated inside its idx header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ConfigError(f"{path} has idx magic number {found}; expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(dims).prod())
    if len(raw) != expected:
        raise ConfigError(
            f"{path} holds {len(raw)} bytes but its header {dims} declares {expected}; the file "
            "is truncated or corrupt"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(dims)


def _read_fashion_mnist(root: Path, download: bool) -> _Raw:
    files = ", ".join(f"{stem}.gz" for stem in _FASHION_FILES)
    hint = "install Debian's dataset-fashion-mnist or pass download: true"
    _prepare_dir("fashion_mnist", root, download, files, hint)
    folder = _fashion_folder(root)
    if folder is None and download:
        tv = importlib.import_module("torchvision.datasets")
        # torchvision fetches and md5-checks all four files into root/FashionMNIST/raw.
        _download("fashion_mnist", root, lambda: tv.FashionMNIST(root=str(root), download=True))
        folder = _fashion_folder(root)
    if folder is None:
        absent = next(s for s in _FASHION_FILES if _idx_file(root, s) is None)
        raise _missing("fashion_mnist", root, f"{absent}.gz", files, hint)
    paths = [_idx_file(folder, stem) for stem in _FASHION_FILES]
    train_xp, train_yp, test_xp, test_yp = (p for p in paths if p is not None)
    train_x = _read_idx(train_xp, _IDX_IMAGES_MAGIC, 3).unsqueeze(1)  # N x 1 x 28 x 28
    test_x = _read_idx(test_xp, _IDX_IMAGES_MAGIC, 3).unsqueeze(1)
    train_y = _read_idx(train_yp, _IDX_LABELS_MAGIC, 1).to(torch.int64)
    test_y = _read_idx(test_yp, _IDX_LABELS_MAGIC, 1).to(torch.int64)
    _check_labels(train_yp, train_y, 10, train_x.shape[0])
    _check_labels(test_yp, test_y, 10, test_x.shape[0])
    return _Raw(train_x, train_y, test_x, test_y, num_classes=10)


# ----------------------------------------------------------------------------- CIFAR-10/100


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not be able to run code.

    The CIFAR batches reference exactly numpy's ``_reconstruct``, ``ndarray`` and ``dtype``
    (``numpy.core`` when written by numpy 1, ``numpy._core`` by numpy 2); ``_codecs.encode``
    appears when Python 3 writes bytes at protocol 2.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            # numpy 2 keeps numpy.core only as a deprecated alias: go to the real module.
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # numpy < 2
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """One CIFAR python batch: ``data`` (N x 3072 uint8, R then G then B planes) and labels."""
    import numpy as np

    hint = "delete it and pass download: true to fetch a fresh copy"
    try:
        with path.open("rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        data, labels = entry["data"], entry[label_key]
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        reason = _one_line(err)
        raise ConfigError(f"{path} is not a readable CIFAR batch ({reason}); {hint}") from err
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        found = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ConfigError(f"{path} has 'data' of {found}; expected uint8 N x 3072 ({hint})")
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return x, _check_labels(path, y.reshape(-1), num_classes, x.shape[0])


def _read_cifar(
    name: str, root: Path, download: bool, files: Sequence[str], label_key: str, classes: int
) -> _Raw:
    *train_files, test_file = files
    folder = files[0].split("/")[0]
    expected = f"{folder}/ ({', '.join(rel.split('/')[1] for rel in files)})"
    _prepare_dir(name, root, download, expected)
    if download and not all((root / rel).is_file() for rel in files):
        cls = "CIFAR10" if classes == 10 else "CIFAR100"
        tv = importlib.import_module("torchvision.datasets")
        _download(name, root, lambda: getattr(tv, cls)(root=str(root), download=True))
    for rel in files:
        if not (root / rel).is_file():
            raise _missing(name, root, rel, expected, "pass download: true to fetch it")
    parts = [_read_cifar_batch(root / rel, label_key, classes) for rel in train_files]
    test_x, test_y = _read_cifar_batch(root / test_file, label_key, classes)
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    return _Raw(train_x, train_y, test_x, test_y, num_classes=classes)


def _read_cifar10(root: Path, download: bool) -> _Raw:
    files = [*_CIFAR10_FILES, f"{_CIFAR10_DIR}/test_batch"]
    return _read_cifar("cifar10", root, download, files, "labels", 10)


def _read_cifar100(root: Path, download: bool) -> _Raw:
    files = [f"{_CIFAR100_DIR}/train", f"{_CIFAR100_DIR}/test"]
    return _read_cifar("cifar100", root, download, files, "fine_labels", 100)


# ----------------------------------------------------------------------------- STL-10


def _read_stl_images(path: Path) -> Tensor:
    per_image = 3 * _STL10_SIDE * _STL10_SIDE
    size = path.stat().st_size
    if size == 0 or size % per_image:
        raise ConfigError(
            f"{path} holds {size} bytes, not a whole number of 3x96x96 images; the file is "
            "truncated or corrupt"
        )
    buf = bytearray(size)
    with path.open("rb") as f:
        f.readinto(buf)
    x = torch.frombuffer(buf, dtype=torch.uint8).reshape(-1, 3, _STL10_SIDE, _STL10_SIDE)
    # The binaries come from MATLAB: each channel is stored column-major, so swap H and W back.
    return x.transpose(2, 3).contiguous()


def _read_stl_labels(path: Path, n: int) -> Tensor:
    y = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).to(torch.int64) - 1
    return _check_labels(path, y, 10, n)  # stored 1..10


def _read_stl10(root: Path, download: bool) -> _Raw:
    names = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    rels = [f"{_STL10_DIR}/{n}" for n in names]
    expected = f"{_STL10_DIR}/ ({', '.join(names)})"
    _prepare_dir("stl10", root, download, expected)
    if download and not all((root / rel).is_file() for rel in rels):
        tv = importlib.import_module("torchvision.datasets")
        _download("stl10", root, lambda: tv.STL10(root=str(root), split="train", download=True))
    for rel in rels:
        if not (root / rel).is_file():
            raise _missing("stl10", root, rel, expected, "pass download: true to fetch it, 2.6 GB")
    train_x = _read_stl_images(root / rels[0])
    test_x = _read_stl_images(root / rels[2])
    train_y = _read_stl_labels(root / rels[1], train_x.shape[0])
    test_y = _read_stl_labels(root / rels[3], test_x.shape[0])
    return _Raw(train_x, train_y, test_x, test_y, num_classes=10)


# ----------------------------------------------------------------------------- ImageFolder


def _image_folder(folder: Path, transform: Any) -> Any:
    datasets = importlib.import_module("torchvision.datasets")
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"'{folder}' is not an image folder ({_one_line(err)}); expected "
            f"{folder}/<class>/*.png|jpg"
        ) from err


def _decode_all(dataset: Any, size: int, folder: Path) -> Tensor:
    """Decode every image of ``dataset`` once (CPU workers) into one uint8 N x 3 x S x S tensor."""
    from torch.utils.data import DataLoader

    x = torch.empty((len(dataset), 3, size, size), dtype=torch.uint8)
    loader = DataLoader(
        dataset,
        batch_size=_DECODE_BATCH,
        num_workers=_num_workers(len(dataset), _DECODE_BATCH),
        generator=torch.Generator().manual_seed(0),  # keep the global RNG untouched
    )
    pos = 0
    try:
        for batch, _ in loader:
            x[pos : pos + batch.shape[0]] = batch
            pos += batch.shape[0]
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files
        raise ConfigError(f"an image under '{folder}' cannot be decoded: {_one_line(err)}") from err
    return x


def _streaming_stats(
    dataset: Any, indices: Tensor, seed: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean/std from a seeded sample of at most ``_STATS_SAMPLES`` training images."""
    if indices.numel() > _STATS_SAMPLES:
        rng = torch.Generator().manual_seed(seed)
        indices = indices[torch.randperm(indices.numel(), generator=rng)[:_STATS_SAMPLES]]
    sample = StreamingSplit(dataset, indices, torch.device("cpu"))
    hist = torch.zeros((3, 256), dtype=torch.int64)
    for x, _ in sample.iter_batches(_DECODE_BATCH, None, shuffle=False, drop_last=False):
        hist += _histograms(x)
    return _hist_stats(hist)


def _load_imagefolder(
    root: Path, download: bool, opts: _Options, max_resident_bytes: int
) -> DataBundle:
    layout = "train/<class>/*.png|jpg and test/<class>/*.png|jpg"
    if download:
        raise ConfigError(
            f"dataset 'imagefolder' in '{root}' cannot be downloaded; set download: false and "
            f"provide {layout}"
        )
    _prepare_dir("imagefolder", root, download, layout, "it cannot be downloaded")
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise _missing("imagefolder", root, f"{part}/", layout, "it cannot be downloaded")
    transforms = importlib.import_module("torchvision.transforms.v2")
    size = opts.image_size or _IMAGEFOLDER_SIZE
    # Resize the short side, then centre-crop to a square; PILToTensor keeps uint8 0..255.
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    train_ds = _image_folder(root / "train", transform)
    test_ds = _image_folder(root / "test", transform)
    if list(test_ds.classes) != list(train_ds.classes):
        raise ConfigError(
            f"'{root / 'test'}' has classes {test_ds.classes}; expected the classes of "
            f"'{root / 'train'}': {train_ds.classes}"
        )
    targets = torch.as_tensor(train_ds.targets, dtype=torch.int64)
    test_y = torch.as_tensor(test_ds.targets, dtype=torch.int64)
    train_idx, val_idx = _train_val_indices("imagefolder", targets, opts)
    n_images = train_idx.numel() + val_idx.numel() + test_y.numel()

    if n_images * 3 * size * size > max_resident_bytes:
        # Too large for the device: decode per batch on CPU workers instead.
        mean, std = _streaming_stats(train_ds, train_idx, opts.seed)
        return DataBundle(
            name="imagefolder",
            kind="image",
            train=StreamingSplit(train_ds, train_idx, opts.device),
            val=StreamingSplit(train_ds, val_idx, opts.device),
            test=StreamingSplit(test_ds, torch.arange(test_y.numel()), opts.device),
            num_classes=len(train_ds.classes),
            in_channels=3,
            image_size=size,
            mean=mean,
            std=std,
        )

    from torch.utils.data import Subset

    keep = torch.cat([train_idx, val_idx])
    decoded = _decode_all(Subset(train_ds, keep.tolist()), size, root / "train")
    train_x, val_x = decoded[: train_idx.numel()], decoded[train_idx.numel() :]
    test_x = _decode_all(test_ds, size, root / "test")
    mean, std = _channel_stats(train_x)
    return DataBundle(
        name="imagefolder",
        kind="image",
        train=Split(train_x.to(opts.device), targets[train_idx].to(opts.device)),
        val=Split(val_x.to(opts.device), targets[val_idx].to(opts.device)),
        test=Split(test_x.to(opts.device), test_y.to(opts.device)),
        num_classes=len(train_ds.classes),
        in_channels=3,
        image_size=size,
        mean=mean,
        std=std,
    )
