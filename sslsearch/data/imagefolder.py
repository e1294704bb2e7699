"""ImageFolders (``train/<class>/*`` and ``test/<class>/*``), decoded once into memory, or streamed
by CPU workers when larger than ``max_resident_bytes``; or, without class folders (images right
in ``data_dir`` or in ``data_dir/train``), unlabeled: a random validation hold-out, no test split,
for label-free searches (README, "Data without labels").

The files come from :mod:`sslsearch.data.imagefiles`' listing (links followed only inside the
split folder) and pass its header checks before anything is decoded: a bad file is named (or,
with ``skip_bad_images``, left out), as the driver's pre-flight named it before the sweep."""

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch.data.assemble import (
    Options,
    channel_stats,
    hist_stats,
    histograms,
    train_val_indices,
)
from sslsearch.data.files import prepare_dir
from sslsearch.data.imagefiles import Listing, refuse_bad, survey
from sslsearch.data.splits import DataBundle, Split, StreamingSplit, num_workers
from sslsearch.data.survey import (
    IMAGEFOLDER_LAYOUT,
    IMAGEFOLDER_SIDE,
    imagefolder_listings,
    unlabeled_folder,
)
from sslsearch.errors import ConfigError

__all__ = ["load_imagefolder", "unlabeled_folder"]

_STATS_SAMPLES = 10_000  # streaming splits estimate mean/std from at most this many train images
_DECODE_BATCH = 256  # images per DataLoader batch when decoding an ImageFolder into memory
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L")  # 16-bit greyscale (PNG): scaled to 8 bits


class _Files(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """The files of a listing, each decoded as torchvision's ImageFolder decodes it (PIL,
    converted to RGB; 16-bit greyscale scaled to 8 bits first, where PIL would clip), with its
    label; a file that fails to decode is named."""

    def __init__(self, listing: Listing, transform: Any) -> None:
        self.files = [str(f) for f in listing.files]
        self.labels = list(listing.labels)
        self.classes = list(listing.classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        import numpy as np
        from PIL import Image

        path = self.files[i]
        try:
            with open(path, "rb") as f:
                image: Image.Image = Image.open(f)
                if image.mode in _SIXTEEN_BIT:  # PIL's RGB conversion clips these at 255: white
                    image = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8))
                image = image.convert("RGB")
        except OSError as err:  # PIL.UnidentifiedImageError and truncated files
            raise OSError(f"{path} cannot be decoded: {' '.join(str(err).split())}") from None
        return self.transform(image), self.labels[i]


def _decode_all(dataset: Any, size: int) -> Tensor:
    """Decode every image of ``dataset`` once (CPU workers) into one uint8 N x 3 x S x S tensor."""
    from torch.utils.data import DataLoader

    x = torch.empty((len(dataset), 3, size, size), dtype=torch.uint8)
    loader = DataLoader(
        dataset,
        batch_size=_DECODE_BATCH,
        num_workers=num_workers(len(dataset), _DECODE_BATCH),
        generator=torch.Generator().manual_seed(0),  # keep the global RNG untouched
    )
    pos = 0
    try:
        for batch, _ in loader:
            x[pos : pos + batch.shape[0]] = batch
            pos += batch.shape[0]
    except OSError as err:
        # From a worker, the message ends with the worker's traceback: its last line is ours.
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise ConfigError(lines[-1].removeprefix("OSError: ") if lines else repr(err)) from None
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
        hist += histograms(x)
    return hist_stats(hist)


def _usable(listings: list[Listing], skip_bad_images: bool) -> list[Listing]:
    """The listings with their bad files (header checks) refused, or left out when skipping."""
    bad, _ = survey(f for listing in listings for f in listing.files)
    if bad and not skip_bad_images:
        raise refuse_bad(bad, None, "skip_bad_images: true (--skip-bad-images)")
    return [listing.without(p for p, _ in bad) for listing in listings]


def _load_unlabeled(files: _Files, size: int, opts: Options) -> DataBundle:
    """Every image of the folder: a seeded random validation hold-out, the rest to train."""
    zeros = torch.zeros(len(files), dtype=torch.int64)
    train_idx, val_idx = train_val_indices("imagefolder", zeros, opts)
    decoded = _decode_all(files, size)
    mean, std = channel_stats(decoded[train_idx])
    x = decoded.to(opts.device)
    y = zeros.to(opts.device)
    return DataBundle(
        name="imagefolder", kind="image", train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]), test=Split(x[:0], y[:0]), num_classes=1,
        in_channels=3, image_size=size, mean=mean, std=std, labeled=False)


def load_imagefolder(
    root: Path, download: bool, opts: Options, max_resident_bytes: int,
    skip_bad_images: bool = False,
) -> DataBundle:
    if download:
        raise ConfigError(
            f"dataset 'imagefolder' in '{root}' cannot be downloaded; set download: false and "
            f"provide {IMAGEFOLDER_LAYOUT}"
        )
    prepare_dir("imagefolder", root, download, IMAGEFOLDER_LAYOUT, "it cannot be downloaded")
    transforms = importlib.import_module("torchvision.transforms.v2")
    size = opts.image_size or IMAGEFOLDER_SIDE
    # Resize the short side, then centre-crop to a square; PILToTensor keeps uint8 0..255.
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    train_list, test_list = imagefolder_listings(root)
    if test_list is None:
        (train_list,) = _usable([train_list], skip_bad_images)
        return _load_unlabeled(_Files(train_list, transform), size, opts)
    train_list, test_list = _usable([train_list, test_list], skip_bad_images)
    train_ds, test_ds = _Files(train_list, transform), _Files(test_list, transform)
    targets = torch.as_tensor(train_ds.labels, dtype=torch.int64)
    test_y = torch.as_tensor(test_ds.labels, dtype=torch.int64)
    train_idx, val_idx = train_val_indices("imagefolder", targets, opts)
    n_images = train_idx.numel() + val_idx.numel() + test_y.numel()

    if n_images * 3 * size * size > max_resident_bytes:
        # Too large for the device: decode per batch on CPU workers instead.
        mean, std = _streaming_stats(train_ds, train_idx, opts.seed)
        return DataBundle(
            name="imagefolder", kind="image",
            train=StreamingSplit(train_ds, train_idx, opts.device),
            val=StreamingSplit(train_ds, val_idx, opts.device),
            test=StreamingSplit(test_ds, torch.arange(test_y.numel()), opts.device),
            num_classes=len(train_ds.classes), in_channels=3, image_size=size, mean=mean, std=std)

    from torch.utils.data import Subset

    keep = torch.cat([train_idx, val_idx])
    decoded = _decode_all(Subset(train_ds, keep.tolist()), size)
    train_x, val_x = decoded[: train_idx.numel()], decoded[train_idx.numel() :]
    test_x = _decode_all(test_ds, size)
    mean, std = channel_stats(train_x)
    return DataBundle(
        name="imagefolder", kind="image",
        train=Split(train_x.to(opts.device), targets[train_idx].to(opts.device)),
        val=Split(val_x.to(opts.device), targets[val_idx].to(opts.device)),
        test=Split(test_x.to(opts.device), test_y.to(opts.device)),
        num_classes=len(train_ds.classes), in_channels=3, image_size=size, mean=mean, std=std)
