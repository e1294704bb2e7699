"""What a dataset holds, read from its headers and its file listing (no image is decoded), and
what its splits need. The driver's pre-flight (:mod:`sslsearch.search.preflight`) surveys every
dataset a sweep can draw before any trial starts; the ImageFolder loader lists, checks and counts
through the same functions, so a folder the pre-flight passes is the folder the trials load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sslsearch.data.assemble import split_sizes
from sslsearch.data.embedded import EMBEDDED_DIR
from sslsearch.data.files import missing
from sslsearch.data.formats import fashion_mnist_shape
from sslsearch.data.imagefiles import (
    Listing,
    class_names,
    has_images,
    list_labeled,
    list_unlabeled,
    survey,
)
from sslsearch.data.speech import survey_speech_commands
from sslsearch.errors import ConfigError

# The built-in datasets the pre-flight does not open (their loaders check their own files):
# images in all (train + test), channels, side.
_BUILT_IN = {"digits": (1797, 1, 8), "cifar10": (60000, 3, 32), "cifar100": (60000, 3, 32),
             "stl10": (13000, 3, 96)}
IMAGEFOLDER_SIDE = 64  # an ImageFolder's default side (resize + centre crop)
IMAGEFOLDER_LAYOUT = ("train/<class>/*.png|jpg and test/<class>/*.png|jpg (labeled), or the "
                      "images themselves, with no class folders (unlabeled)")
# One batch's bytes per decoded uint8 pixel-channel: the uint8 images and two float32 views.
_BATCH_BYTES_PER_VALUE = 1 + 2 * 4


@dataclass(frozen=True)
class Shape:
    """A dataset as the pre-flight sees it."""

    name: str
    where: str  # the data folder (or the dataset's name), for messages
    n_images: int  # train + test: what a resident bundle holds
    channels: int
    side: int  # as loaded without image_size
    classes: tuple[str, ...] = ()  # training class names; () unknown or unlabeled
    train_counts: tuple[int, ...] = ()  # training images per class (before the hold-out)
    test_counts: tuple[int, ...] = ()  # test images per class (ImageFolder)
    labeled: bool = True  # False: an ImageFolder without class folders
    largest_pixels: int = 0  # the largest image a worker decodes whole (ImageFolder)
    bad: tuple[tuple[Path, str], ...] = ()  # files no trial can decode, with why
    skipped_links: tuple[Path, ...] = ()


def check_dir(name: str, root: Path, download: bool) -> bool:
    """Whether ``root`` holds files to survey: a ConfigError when it cannot be a data folder,
    False when absent and ``download`` will fill it (in the first trial, under its lock)."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data_dir '{root}' for {name} is not a directory (a file or a device); "
                          "expected the dataset's folder")
    if not root.exists():
        if download:
            return False
        raise ConfigError(f"data_dir '{root}' for {name} does not exist")
    return True


def unlabeled_folder(root: Path) -> Path | None:
    """The folder of an unlabeled ImageFolder: images right in ``root`` (no ``train/``), or in
    ``root/train`` with no class folders; None for a labeled layout (or no folder at all)."""
    for folder in (root / "train", root):
        if folder.is_dir() and not class_names(folder) and has_images(folder):
            return folder
    return None


def imagefolder_listings(root: Path) -> tuple[Listing, Listing | None]:
    """The training and test listings of an ImageFolder (test None when unlabeled); the test
    folder's classes must be the training folder's."""
    folder = unlabeled_folder(root)
    if folder is not None:
        return list_unlabeled(folder), None
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise missing("imagefolder", root, f"{part}/", IMAGEFOLDER_LAYOUT,
                          "it cannot be downloaded")
    train = list_labeled(root / "train")
    test_classes = class_names(root / "test")
    if test_classes != list(train.classes):
        raise ConfigError(f"'{root / 'test'}' has classes {test_classes}; expected the classes "
                          f"of '{root / 'train'}': {list(train.classes)}")
    return train, list_labeled(root / "test", test_classes)


def imagefolder_shape(root: Path) -> Shape:
    """An ImageFolder's listing, every file's header checked; counts leave the bad files out."""
    train, test = imagefolder_listings(root)
    listings = (train,) if test is None else (train, test)
    bad, largest = survey(f for listing in listings for f in listing.files)
    drop = [p for p, _ in bad]
    kept = [listing.without(drop) for listing in listings]
    return Shape(
        name="imagefolder", where=str(root), n_images=sum(len(k.files) for k in kept),
        channels=3, side=IMAGEFOLDER_SIDE, classes=kept[0].classes,
        train_counts=tuple(kept[0].counts()), test_counts=tuple(kept[1].counts()) if test else (),
        labeled=test is not None, largest_pixels=largest, bad=tuple(bad),
        skipped_links=tuple(p for listing in listings for p in listing.skipped_links))


def dataset_shape(name: str, data_dir: str | None, download: bool) -> Shape | None:
    """The :class:`Shape` of dataset ``name`` in ``data_dir``; None when there is nothing to
    survey before the trials run (a download to come, or a tabular dataset; a Speech Commands
    folder is checked, its WAV headers included)."""
    if name in _BUILT_IN:
        n, channels, side = _BUILT_IN[name]
        if name != "digits" and data_dir is not None:
            check_dir(name, Path(data_dir), download)
        return Shape(name=name, where=data_dir or name, n_images=n, channels=channels, side=side)
    if name == "fashion_mnist_small":  # shipped in the package: data_dir is not read
        return _fashion_shape(name, EMBEDDED_DIR, False, where=name)
    if name == "speech_commands" and data_dir is not None:
        # Its splits are its lists and its rows are features, not images: nothing for the
        # checks below, but a malformed folder is refused here, before Ray starts.
        survey_speech_commands(Path(data_dir), download)
        return None
    if data_dir is None or name not in ("imagefolder", "fashion_mnist"):
        return None
    root = Path(data_dir)
    if not check_dir(name, root, download and name != "imagefolder"):
        return None
    if name == "imagefolder":
        return imagefolder_shape(root)
    return _fashion_shape(name, root, download, where=str(root))


def _fashion_shape(name: str, root: Path, download: bool, *, where: str) -> Shape | None:
    found = fashion_mnist_shape(root, download)
    if found is None:
        return None
    counts, n_test, side = found
    return Shape(name=name, where=where, n_images=sum(counts) + n_test, channels=1, side=side,
                 classes=tuple(map(str, range(10))), train_counts=tuple(counts))


# ----------------------------------------------------------------------------- what splits need


def check_classes(where: str, classes: Sequence[str], train_counts: Sequence[int],
                  test_counts: Sequence[int], val_fraction: float,
                  max_train_samples: int | None) -> None:
    """A classification task: at least two classes, each with at least one training and one
    validation image after the split (and one test image, when the test counts are known); a
    ConfigError names the first class that falls short, with its counts."""
    hint = ("; to search it without labels, set trial.labels: false (with a label-free "
            "search.metric such as rankme)")
    total = sum(train_counts)
    if len(classes) < 2:
        only = f" ('{classes[0]}', {total} images)" if classes else ""
        raise ConfigError(f"{where}: {len(classes) or 'no'} class{only}; classification needs "
                          f"at least two class folders{hint}")
    for name, n in zip(classes, train_counts, strict=True):
        if n == 0:
            raise ConfigError(f"{where}: class '{name}' has no training images "
                              f"(train/{name}/ holds no readable image); every class needs at "
                              "least one training and one validation image")
    train, val = split_sizes(train_counts, val_fraction, max_train_samples)
    for name, n, t, v in zip(classes, train_counts, train, val, strict=True):
        if t == 0 or v == 0:
            subset = ("" if max_train_samples is None
                      else f" and max_train_samples {max_train_samples}")
            raise ConfigError(
                f"{where}: class '{name}' has {n} image{'s' if n != 1 else ''}: {t} for "
                f"training and {v} for "
                f"validation at val_fraction {val_fraction}{subset} ({len(classes)} classes, "
                f"{total} images); every class needs at least one of each: add images, raise "
                f"val_fraction or merge classes")
    for name, n in zip(classes, test_counts, strict=False):
        if n == 0:
            raise ConfigError(f"{where}: class '{name}' has no test images (test/{name}/ holds "
                              "no readable image)")


def check_unlabeled(where: str, n_train: int, val_fraction: float,
                    max_train_samples: int | None) -> None:
    """Without labels: a training and a validation split, neither empty."""
    train, val = split_sizes([n_train], val_fraction, max_train_samples)
    if train[0] == 0 or val[0] == 0:
        raise ConfigError(f"{where}: {n_train} image{'s' if n_train != 1 else ''}: {train[0]} "
                          f"for training and {val[0]} for validation at val_fraction "
                          f"{val_fraction}; both splits need at least one image")


def check_splits(shape: Shape, labels: bool, val_fraction: float,
                 max_train_samples: int | None, min_val: tuple[int, str] = (1, "")) -> None:
    """:func:`check_classes` (or :func:`check_unlabeled` without labels) for ``shape``; and at
    least ``min_val[0]`` validation images in all, for what ``min_val[1]`` names."""
    where = f"data_dir {shape.where}" if shape.where != shape.name else shape.name
    if not shape.train_counts:
        return
    if labels and shape.labeled:
        check_classes(where, shape.classes, shape.train_counts, shape.test_counts, val_fraction,
                      max_train_samples)
    else:
        check_unlabeled(where, sum(shape.train_counts), val_fraction, max_train_samples)
    n_val = sum(split_sizes(shape.train_counts, val_fraction, max_train_samples)[1])
    if n_val < min_val[0]:
        raise ConfigError(f"{where}: {n_val} validation image{'s' if n_val != 1 else ''} at "
                          f"val_fraction {val_fraction} "
                          f"(of {sum(shape.train_counts)} in train/); {min_val[1]} needs at "
                          f"least {min_val[0]}: add images, raise val_fraction or turn it off")


def memory_need(shape: Shape, image_size: int | None, batch_size: int,
                max_resident_bytes: int) -> tuple[int, str]:
    """A lower bound on the bytes a trial holds at once, and what they are: the decoded dataset
    when it is kept resident (an ImageFolder over ``max_resident_bytes`` streams instead), one
    batch of decoded images with two float32 views of it, and the largest stored image that a
    decoding worker holds whole."""
    side = image_size or shape.side
    per_image = shape.channels * side * side
    train = sum(shape.train_counts) or shape.n_images
    batch = min(batch_size, max(train, 1)) * per_image * _BATCH_BYTES_PER_VALUE
    resident = shape.n_images * per_image
    if shape.name == "imagefolder" and resident > max_resident_bytes:
        resident = 0  # decoded batch by batch by CPU workers
    largest = shape.largest_pixels * 3
    parts = [f"{shape.channels}x{side}x{side} images"]
    if resident:
        parts.append(f"{shape.n_images} of them resident ({_gb(resident)})")
    parts.append(f"a batch of {min(batch_size, max(train, 1))} with two float32 views "
                 f"({_gb(batch)})")
    return resident + batch + largest, ", ".join(parts)


def physical_memory() -> int:
    """This machine's physical memory in bytes (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"
