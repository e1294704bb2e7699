"""ImageFolders (``train/<class>/*`` and ``test/<class>/*``), decoded once into memory, or streamed
by CPU workers when larger than ``max_resident_bytes``; or, without class folders (images right
in ``data_dir`` or in ``data_dir/train``), unlabeled: a random validation hold-out, no test split,
for label-free searches (README, "Data without labels")."""

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
from sslsearch.data.files import missing, one_line, prepare_dir
from sslsearch.data.splits import DataBundle, Split, StreamingSplit, num_workers
from sslsearch.errors import ConfigError

_IMAGEFOLDER_SIZE = 64  # default side length for ImageFolder images (resize + centre crop)
_STATS_SAMPLES = 10_000  # streaming splits estimate mean/std from at most this many train images
_DECODE_BATCH = 256  # images per DataLoader batch when decoding an ImageFolder into memory


def _image_folder(folder: Path, transform: Any) -> Any:
    datasets = importlib.import_module("torchvision.datasets")
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"'{folder}' is not an image folder ({one_line(err)}); expected "
            f"{folder}/<class>/*.png|jpg"
        ) from err


def _decode_all(dataset: Any, size: int, folder: Path) -> Tensor:
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
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files
        raise ConfigError(f"an image under '{folder}' cannot be decoded: {one_line(err)}") from err
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


def _images_in(folder: Path) -> list[Path]:
    extensions = importlib.import_module("torchvision.datasets.folder").IMG_EXTENSIONS
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def unlabeled_folder(root: Path) -> Path | None:
    """The folder of an unlabeled ImageFolder: images right in ``root`` (no ``train/``), or in
    ``root/train`` with no class folders; None for a labeled layout (or no folder at all)."""
    for folder in (root / "train", root):
        if (folder.is_dir() and _images_in(folder)
                and not any(p.is_dir() for p in folder.iterdir())):
            return folder
    return None


class _UnlabeledImages(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """The image files of one folder, sorted by name, each with label 0."""

    def __init__(self, folder: Path, transform: Any) -> None:
        self.files = _images_in(folder)
        self.transform = transform
        self.loader = importlib.import_module("torchvision.datasets.folder").default_loader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.loader(str(self.files[i]))), 0


def _load_unlabeled(folder: Path, transform: Any, size: int, opts: Options) -> DataBundle:
    """Every image of ``folder``: a seeded random validation hold-out, the rest to train."""
    dataset = _UnlabeledImages(folder, transform)
    zeros = torch.zeros(len(dataset), dtype=torch.int64)
    train_idx, val_idx = train_val_indices("imagefolder", zeros, opts)
    decoded = _decode_all(dataset, size, folder)
    mean, std = channel_stats(decoded[train_idx])
    x = decoded.to(opts.device)
    y = zeros.to(opts.device)
    return DataBundle(
        name="imagefolder", kind="image", train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]), test=Split(x[:0], y[:0]), num_classes=1,
        in_channels=3, image_size=size, mean=mean, std=std, labeled=False)


def load_imagefolder(
    root: Path, download: bool, opts: Options, max_resident_bytes: int
) -> DataBundle:
    layout = ("train/<class>/*.png|jpg and test/<class>/*.png|jpg (labeled), or the images "
              "themselves, with no class folders (unlabeled)")
    if download:
        raise ConfigError(
            f"dataset 'imagefolder' in '{root}' cannot be downloaded; set download: false and "
            f"provide {layout}"
        )
    prepare_dir("imagefolder", root, download, layout, "it cannot be downloaded")
    transforms = importlib.import_module("torchvision.transforms.v2")
    size = opts.image_size or _IMAGEFOLDER_SIZE
    # Resize the short side, then centre-crop to a square; PILToTensor keeps uint8 0..255.
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    unlabeled = unlabeled_folder(root)
    if unlabeled is not None:
        return _load_unlabeled(unlabeled, transform, size, opts)
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise missing("imagefolder", root, f"{part}/", layout, "it cannot be downloaded")
    train_ds = _image_folder(root / "train", transform)
    test_ds = _image_folder(root / "test", transform)
    if list(test_ds.classes) != list(train_ds.classes):
        raise ConfigError(
            f"'{root / 'test'}' has classes {test_ds.classes}; expected the classes of "
            f"'{root / 'train'}': {train_ds.classes}"
        )
    targets = torch.as_tensor(train_ds.targets, dtype=torch.int64)
    test_y = torch.as_tensor(test_ds.targets, dtype=torch.int64)
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
    decoded = _decode_all(Subset(train_ds, keep.tolist()), size, root / "train")
    train_x, val_x = decoded[: train_idx.numel()], decoded[train_idx.numel() :]
    test_x = _decode_all(test_ds, size, root / "test")
    mean, std = channel_stats(train_x)
    return DataBundle(
        name="imagefolder", kind="image",
        train=Split(train_x.to(opts.device), targets[train_idx].to(opts.device)),
        val=Split(val_x.to(opts.device), targets[val_idx].to(opts.device)),
        test=Split(test_x.to(opts.device), test_y.to(opts.device)),
        num_classes=len(train_ds.classes), in_channels=3, image_size=size, mean=mean, std=std)
