"""Datasets as uint8 image tensors (or float32 feature tables) resident on the trial's device.

Every loader returns a :class:`DataBundle` with three splits:

* ``train``: the official training set minus ``val`` (optionally a stratified subset of it);
* ``val``: a stratified, seeded hold-out of the training set, where hyperparameters are selected
  (Speech Commands alone has an official validation split, kept as it is);
* ``test``: the official test split, only ever reported. Datasets without one (digits, CovType)
  get a fixed stratified 20 % test split drawn with seed 0, so it is the same in every trial.

Files are read in each dataset's own on-disk format (idx, CIFAR pickles, STL-10 binaries,
ImageFolder, Speech Commands' WAV folders, turned into log-mel tables) rather than through
torchvision's dataset classes, which refuse files whose md5 differs: that keeps tiny test
fixtures working. torchvision is only used to download, and to list
and decode ImageFolders. numpy, scikit-learn and torchvision are imported lazily, so the training
loop imports this module on a machine with nothing but torch installed.

Bad user input (unknown name, missing or corrupt files, out-of-range options) raises
:class:`~sslsearch.errors.ConfigError` with a one-line message naming the dataset, field or path.
"""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sslsearch.data.assemble import (
    TEST_FRACTION,
    TEST_SEED,
    Options,
    Raw,
    image_bundle,
    split_off,
    tabular_bundle,
)
from sslsearch.data.embedded import read_fashion_mnist_small
from sslsearch.data.files import DOWNLOAD_LOCK, download_lock, need_root
from sslsearch.data.formats import (
    read_cifar10,
    read_cifar100,
    read_covtype,
    read_digits,
    read_fashion_mnist,
    read_stl10,
)
from sslsearch.data.imagefolder import load_imagefolder
from sslsearch.data.speech import read_speech_commands
from sslsearch.data.splits import DataBundle, Kind, Split, StreamingSplit
from sslsearch.errors import ConfigError

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIRS",
    "DOWNLOAD_LOCK",
    "MAX_RESIDENT_BYTES",
    "TABULAR",
    "DataBundle",
    "Kind",
    "Split",
    "StreamingSplit",
    "download_lock",
    "load_dataset",
    "load_dataset_cached",
]

DATASETS: tuple[str, ...] = (
    "digits",
    "digits_tabular",
    "fashion_mnist",
    "fashion_mnist_small",
    "cifar10",
    "cifar100",
    "stl10",
    "imagefolder",
    "covtype",
    "speech_commands",
)
# The datasets that load as feature tables (kind "tabular": the mlp backbone, no image_size).
TABULAR: tuple[str, ...] = ("digits_tabular", "covtype", "speech_commands")

# Used when data_dir is None. Debian's dataset-fashion-mnist installs the four idx .gz files here.
DEFAULT_DATA_DIRS: dict[str, str] = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
# An ImageFolder whose decoded images would take more than this streams from CPU workers.
MAX_RESIDENT_BYTES = 4 * 2**30


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
    max_resident_bytes: int = MAX_RESIDENT_BYTES,
    skip_bad_images: bool = False,
) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) onto ``device``.

    ``seed`` draws the validation split (``val_fraction`` of the training set, stratified) and the
    ``max_train_samples`` subset; the test split never depends on it (nor, for speech_commands,
    the validation split: its lists fix both, and ``val_fraction`` is unused). ``image_size``
    resizes images (ImageFolder default 64). An ImageFolder larger than ``max_resident_bytes``
    streams; its files that fail the header checks (:mod:`sslsearch.data.imagefiles`) are
    refused, or left out with ``skip_bad_images``.
    """
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    _check_options(name, val_fraction, max_train_samples, image_size, max_resident_bytes)
    dev = _resolve_device(device)
    if data_dir is None and name in DEFAULT_DATA_DIRS:
        data_dir = DEFAULT_DATA_DIRS[name]
    root = None if data_dir is None else Path(data_dir).expanduser()
    opts = Options(val_fraction, seed, max_train_samples, image_size, dev)

    if name == "imagefolder":
        return load_imagefolder(need_root(name, root), download, opts, max_resident_bytes,
                                skip_bad_images)
    if name in ("digits", "digits_tabular"):
        images, features, labels = read_digits()
        rest, test = split_off(labels, TEST_FRACTION, torch.Generator().manual_seed(TEST_SEED))
        table = features if name == "digits_tabular" else images
        raw = Raw(table[rest], labels[rest], table[test], labels[test], num_classes=10)
        if name == "digits_tabular":
            return tabular_bundle(name, raw, opts)
        return image_bundle(name, raw, opts)
    if name == "covtype":
        return tabular_bundle(name, read_covtype(root, download), opts)
    if name == "speech_commands":
        return tabular_bundle(name, read_speech_commands(need_root(name, root), download), opts)
    if name == "fashion_mnist_small":  # shipped inside the package: data_dir is not read
        return image_bundle(name, read_fashion_mnist_small(), opts)
    readers: dict[str, Callable[[Path, bool], Raw]] = {
        "fashion_mnist": read_fashion_mnist,
        "cifar10": read_cifar10,
        "cifar100": read_cifar100,
        "stl10": read_stl10,
    }
    return image_bundle(name, readers[name](need_root(name, root), download), opts)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, options: tuple[tuple[str, Any], ...]) -> DataBundle:
    return load_dataset(name, **dict(options))


def load_dataset_cached(name: str, **options: Any) -> DataBundle:
    """:func:`load_dataset` (same keyword options, same defaults: declared there only), memoised
    per process so a worker running many trials loads once.

    The bundle is shared: callers must not modify its tensors in place.
    """
    # Trials chdir into their own folders: key on the absolute path so every trial hits one entry.
    if options.get("data_dir") is not None:
        options["data_dir"] = str(Path(options["data_dir"]).expanduser().resolve())
    if "device" in options:
        options["device"] = str(_resolve_device(options["device"]))
    return _load_cached(name, tuple(sorted(options.items())))


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
        if name in TABULAR:
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
