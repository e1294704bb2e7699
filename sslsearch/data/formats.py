"""Readers of each dataset's own on-disk format: scikit-learn's digits and CovType, Fashion-MNIST's
idx files, the CIFAR pickles (through an unpickler that loads arrays only) and STL-10's binaries.
Each returns the official splits as a :class:`~sslsearch.data.assemble.Raw`."""

import contextlib
import gzip
import importlib
import math
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch.data.assemble import TEST_FRACTION, TEST_SEED, Raw, check_labels, split_off
from sslsearch.data.files import download_lock, locked_download, missing, one_line, prepare_dir
from sslsearch.errors import ConfigError

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




# ----------------------------------------------------------------------------- digits, covtype


def _import_sklearn_datasets(name: str) -> Any:
    try:
        return importlib.import_module("sklearn.datasets")
    except ImportError as err:
        raise ConfigError(
            f"dataset {name!r} needs scikit-learn, which is not installed (pip install "
            "scikit-learn)"
        ) from err


def read_digits() -> tuple[Tensor, Tensor, Tensor]:
    """sklearn's bundled 8x8 digits: uint8 images, float64 features (0..16) and labels."""
    digits = _import_sklearn_datasets("digits").load_digits()
    features = torch.as_tensor(digits.data, dtype=torch.float64)  # N x 64, values 0..16
    # 0..16 -> 0..255 with integer arithmetic, so 16 maps exactly to 255.
    images = (features.to(torch.int64) * 255 // 16).to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images, features, labels


def read_covtype(root: Path | None, download: bool) -> Raw:
    """scikit-learn's CovType (581,012 x 54, classes 1..7 -> 0..6) with a fixed test split."""
    datasets = _import_sklearn_datasets("covtype")
    where = "scikit-learn's default data home" if root is None else f"data_dir '{root}'"
    if root is not None:
        prepare_dir("covtype", root, download, "scikit-learn's covertype cache")
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
        raise ConfigError(f"could not download covtype into {where}: {one_line(err)}") from err
    features = torch.as_tensor(bunch.data, dtype=torch.float64)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64) - 1
    check_labels(f"covtype in {where}", labels, 7, features.shape[0])
    rest, test = split_off(labels, TEST_FRACTION, torch.Generator().manual_seed(TEST_SEED))
    return Raw(features[rest], labels[rest], features[test], labels[test], num_classes=7)


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


def _idx_dims(head: bytes, n_bytes: int, path: Path, magic: int, ndim: int,
              modulo: int | None = None) -> list[int]:
    """The dimensions an idx file's header ``head`` declares, checked against its magic number
    and against ``n_bytes``, the file's uncompressed length (``modulo`` that number: a gzip
    trailer records the length modulo 2**32)."""
    header = 4 + 4 * ndim
    if len(head) < header:
        raise ConfigError(f"{path} holds {len(head)} bytes: it is truncated inside its idx header")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise ConfigError(f"{path} has idx magic number {found}; expected {magic}")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if n_bytes != (expected if modulo is None else expected % modulo):
        raise ConfigError(
            f"{path} holds {n_bytes} bytes but its header {dims} declares {expected}; the file "
            "is truncated or corrupt"
        )
    return dims


def _read_idx(path: Path, magic: int, ndim: int) -> Tensor:
    """A uint8 idx file (optionally gzipped), checking its magic number and declared size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path} is not a readable idx file: {one_line(err)}") from err
    dims = _idx_dims(raw, len(raw), path, magic, ndim)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_header(path: Path, magic: int, ndim: int) -> list[int]:
    """:func:`_read_idx`'s checks from the header alone, the data never decompressed: the
    declared size is compared with the file's (a gzip file's length from its trailer)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(4 + 4 * ndim)
            with path.open("rb") as raw:
                raw.seek(-4, 2)
                return _idx_dims(head, int.from_bytes(raw.read(4), "little"), path, magic, ndim,
                                 modulo=2**32)
        with path.open("rb") as f:
            head = f.read(4 + 4 * ndim)
        return _idx_dims(head, path.stat().st_size, path, magic, ndim)
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(f"{path} is not a readable idx file: {one_line(err)}") from err


def _fashion_paths(root: Path, download: bool) -> list[Path]:
    """The four idx files (train images, train labels, test images, test labels), fetched when
    ``download`` and absent; a ConfigError names what lacks."""
    files = ", ".join(f"{stem}.gz" for stem in _FASHION_FILES)
    hint = "install Debian's dataset-fashion-mnist or pass download: true"
    prepare_dir("fashion_mnist", root, download, files, hint)
    folder = _fashion_folder(root)
    if folder is None and download:
        tv = importlib.import_module("torchvision.datasets")
        # torchvision fetches and md5-checks all four files into root/FashionMNIST/raw.
        locked_download("fashion_mnist", root,
                        lambda: tv.FashionMNIST(root=str(root), download=True))
        folder = _fashion_folder(root)
    if folder is None:
        absent = next(s for s in _FASHION_FILES if _idx_file(root, s) is None)
        raise missing("fashion_mnist", root, f"{absent}.gz", files, hint)
    return [p for p in (_idx_file(folder, stem) for stem in _FASHION_FILES) if p is not None]


def read_fashion_mnist(root: Path, download: bool) -> Raw:
    train_xp, train_yp, test_xp, test_yp = _fashion_paths(root, download)
    train_x = _read_idx(train_xp, _IDX_IMAGES_MAGIC, 3).unsqueeze(1)  # N x 1 x 28 x 28
    test_x = _read_idx(test_xp, _IDX_IMAGES_MAGIC, 3).unsqueeze(1)
    train_y = _read_idx(train_yp, _IDX_LABELS_MAGIC, 1).to(torch.int64)
    test_y = _read_idx(test_yp, _IDX_LABELS_MAGIC, 1).to(torch.int64)
    check_labels(train_yp, train_y, 10, train_x.shape[0])
    check_labels(test_yp, test_y, 10, test_x.shape[0])
    return Raw(train_x, train_y, test_x, test_y, num_classes=10)


def fashion_mnist_shape(root: Path, download: bool) -> tuple[list[int], int, int] | None:
    """Without reading the images: the training labels' count per class, the number of test
    images and the image side, every header checked as :func:`read_fashion_mnist` checks it;
    None when the files are absent and ``download`` would fetch them (in the trial)."""
    if download and (not root.exists() or (root.is_dir() and _fashion_folder(root) is None)):
        return None  # fetched by the first trial, under the download lock
    train_xp, train_yp, test_xp, test_yp = _fashion_paths(root, False)
    n_train, side, _ = idx_header(train_xp, _IDX_IMAGES_MAGIC, 3)
    n_test = idx_header(test_xp, _IDX_IMAGES_MAGIC, 3)[0]
    idx_header(test_yp, _IDX_LABELS_MAGIC, 1)
    train_y = check_labels(train_yp, _read_idx(train_yp, _IDX_LABELS_MAGIC, 1).to(torch.int64),
                           10, n_train)  # 60 kB: read, for the per-class counts
    return torch.bincount(train_y, minlength=10).tolist(), n_test, side


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
        reason = one_line(err)
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
    return x, check_labels(path, y.reshape(-1), num_classes, x.shape[0])


def _read_cifar(
    name: str, root: Path, download: bool, files: Sequence[str], label_key: str, classes: int
) -> Raw:
    *train_files, test_file = files
    folder = files[0].split("/")[0]
    expected = f"{folder}/ ({', '.join(rel.split('/')[1] for rel in files)})"
    prepare_dir(name, root, download, expected)
    if download and not all((root / rel).is_file() for rel in files):
        cls = "CIFAR10" if classes == 10 else "CIFAR100"
        tv = importlib.import_module("torchvision.datasets")
        locked_download(name, root, lambda: getattr(tv, cls)(root=str(root), download=True))
    for rel in files:
        if not (root / rel).is_file():
            raise missing(name, root, rel, expected, "pass download: true to fetch it")
    parts = [_read_cifar_batch(root / rel, label_key, classes) for rel in train_files]
    test_x, test_y = _read_cifar_batch(root / test_file, label_key, classes)
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    return Raw(train_x, train_y, test_x, test_y, num_classes=classes)


def read_cifar10(root: Path, download: bool) -> Raw:
    files = [*_CIFAR10_FILES, f"{_CIFAR10_DIR}/test_batch"]
    return _read_cifar("cifar10", root, download, files, "labels", 10)


def read_cifar100(root: Path, download: bool) -> Raw:
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
    return check_labels(path, y, 10, n)  # stored 1..10


def read_stl10(root: Path, download: bool) -> Raw:
    names = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    rels = [f"{_STL10_DIR}/{n}" for n in names]
    expected = f"{_STL10_DIR}/ ({', '.join(names)})"
    prepare_dir("stl10", root, download, expected)
    if download and not all((root / rel).is_file() for rel in rels):
        tv = importlib.import_module("torchvision.datasets")
        locked_download("stl10", root,
                        lambda: tv.STL10(root=str(root), split="train", download=True))
    for rel in rels:
        if not (root / rel).is_file():
            raise missing("stl10", root, rel, expected, "pass download: true to fetch it, 2.6 GB")
    train_x = _read_stl_images(root / rels[0])
    test_x = _read_stl_images(root / rels[2])
    train_y = _read_stl_labels(root / rels[1], train_x.shape[0])
    test_y = _read_stl_labels(root / rels[3], test_x.shape[0])
    return Raw(train_x, train_y, test_x, test_y, num_classes=10)
