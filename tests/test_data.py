"""Tests for sslsearch.data on tiny fixtures written in each dataset's real on-disk format.

Every fixture image carries its own id in one pixel, so a test can tell exactly which images
landed in which split and that pixels survive the format's layout (e.g. STL-10's column-major).
"""

import gzip
import pickle
import re
import struct
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch import data
from sslsearch.data import DATASETS, DataBundle, Split, StreamingSplit, load_dataset
from sslsearch.data.assemble import allocate
from sslsearch.errors import ConfigError

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

# ----------------------------------------------------------------------------- fixture writers


def resident(bundle: DataBundle) -> tuple[Split, Split, Split]:
    """The bundle's train, val and test splits, asserted resident (not streaming)."""
    train, val, test = bundle.train, bundle.val, bundle.test
    assert isinstance(train, Split) and isinstance(val, Split) and isinstance(test, Split)
    return train, val, test


def _ids(split: Split, channel: int = 0) -> list[int]:
    """The id each fixture image carries in pixel (channel, 0, 0)."""
    return split.x[:, channel, 0, 0].tolist()


def write_cifar(root: Path, *, hundred: bool, n_train: int, n_test: int) -> None:
    """CIFAR python batches: dicts with 'data' (N x 3072 uint8, R/G/B planes) and labels.

    CIFAR-10 is written at protocol 2 with numpy 1's module names, like the official files;
    CIFAR-100 at protocol 4 with numpy 2's, like a file re-saved today.
    """

    def batch(first_id: int, n: int) -> dict[str, Any]:
        x = np.zeros((n, 3, 32, 32), np.uint8)
        ids = np.arange(first_id, first_id + n)
        x[:, 0, 0, 0] = ids  # R plane, row 0, col 0: the image id
        x[:, 1, 2, 5] = 200  # G plane, row 2, col 5: a known, non-symmetric pixel
        classes = 100 if hundred else 10
        key = "fine_labels" if hundred else "labels"
        return {"data": x.reshape(n, 3072), key: [int(i) % classes for i in ids]}

    def dump(path: Path, entry: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if hundred:
            path.write_bytes(pickle.dumps(entry, protocol=4))
        else:
            blob = pickle.dumps(entry, protocol=2)
            path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))

    if hundred:
        dump(root / "cifar-100-python" / "train", batch(0, n_train))
    else:
        per = n_train // 5
        for i in range(5):
            dump(root / "cifar-10-batches-py" / f"data_batch_{i + 1}", batch(i * per, per))
    folder = "cifar-100-python/test" if hundred else "cifar-10-batches-py/test_batch"
    dump(root / folder, batch(200, n_test))


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    """STL-10 binaries: uint8 N x 3 x 96 x 96 stored column-major per channel, labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for part, n, first in (("train", n_train, 0), ("test", n_test, 100)):
        x = np.zeros((n, 3, 96, 96), np.uint8)
        x[:, 0, 0, 0] = np.arange(first, first + n)
        x[:, 1, 0, 5] = 255  # row 0, col 5: bright; its mirror (row 5, col 0) stays dark
        np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(folder / f"{part}_X.bin")
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{part}_y.bin")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(root: Path, n_train: int = 30, n_test: int = 10, *, gz: bool = True) -> None:
    """The four Fashion-MNIST idx files (magic 2051 images, 2049 labels, big-endian sizes)."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, first in (("train", n_train, 0), ("t10k", n_test, 100)):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 0, 0] = np.arange(first, first + n)
        x[:, 3, 7] = 77  # row 3, col 7
        for stem, blob in (
            (f"{prefix}-images-idx3-ubyte", idx_bytes(x, 2051)),
            (f"{prefix}-labels-idx1-ubyte", idx_bytes(np.arange(n) % 10, 2049)),
        ):
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(blob))
            else:
                (root / stem).write_bytes(blob)


def write_imagefolder(root: Path, n_train: int = 8, n_test: int = 3) -> None:
    """train/ and test/ with classes 'cat' (red) and 'dog' (blue): 16 x 20 PNGs (H x W).

    The id sits in the green channel at (row 0, col 2), which survives Resize(16) (a no-op on the
    short side) and CenterCrop(16) (drops columns 0-1 and 18-19) as pixel (0, 0). One cat image
    per split is greyscale, which ImageFolder's loader converts to RGB.
    """
    image_id = 0
    for part, n in (("train", n_train), ("test", n_test)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.zeros((16, 20, 3), np.uint8)
                pixels[...] = colour
                pixels[0, 2, 1] = image_id
                image = Image.fromarray(pixels)
                if cls == "cat" and i == 0:
                    image = Image.fromarray(np.full((16, 20), image_id, np.uint8), mode="L")
                image.save(root / part / cls / f"{i:03d}.png")
                image_id += 1


# ----------------------------------------------------------------------------- split helpers


def test_split_iter_batches_covers_every_row_once_and_respects_drop_last() -> None:
    split = Split(torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1), torch.arange(10))
    gen = torch.Generator().manual_seed(0)
    seen = [y for _, y in split.iter_batches(3, gen, shuffle=True, drop_last=False)]
    assert [len(b) for b in seen] == [3, 3, 3, 1]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    assert torch.cat(seen).tolist() != list(range(10))  # shuffled (fixed seed)
    kept = [len(y) for _, y in split.iter_batches(3, gen, shuffle=True, drop_last=True)]
    assert kept == [3, 3, 3]
    for x, y in split.iter_batches(4, None, shuffle=False, drop_last=False):
        assert x[:, 0, 0, 0].tolist() == y.tolist()  # rows stay paired with their labels
    a = [
        y.tolist()
        for _, y in split.iter_batches(
            5, torch.Generator().manual_seed(1), shuffle=True, drop_last=False
        )
    ]
    b = [
        y.tolist()
        for _, y in split.iter_batches(
            5, torch.Generator().manual_seed(1), shuffle=True, drop_last=False
        )
    ]
    assert a == b
    with pytest.raises(ConfigError, match="batch_size 0"):
        split.iter_batches(0, None, shuffle=False, drop_last=False)


@pytest.mark.parametrize(
    ("counts", "n", "keep_one", "expected"),
    [
        ([10, 10, 10], 3, True, [1, 1, 1]),
        ([100, 2, 2, 2], 4, True, [1, 1, 1, 1]),  # every class gets one when n covers them
        ([100, 2, 2, 2], 2, True, [2, 0, 0, 0]),  # n too small: proportional
        ([5, 1], 3, True, [3, 0]),  # a singleton class stays in the rest
        ([6, 3], 9, False, [6, 3]),
    ],
)
def test_allocate_is_exact_and_proportional(
    counts: list[int], n: int, keep_one: bool, expected: list[int]
) -> None:
    caps = [c - 1 if keep_one else c for c in counts]
    assert allocate(counts, n, caps) == expected


# ----------------------------------------------------------------------------- digits, covtype


def test_digits_sizes_stratified_and_seeded() -> None:
    bundle = load_dataset("digits", seed=0)
    train, val, test = resident(bundle)
    _, same_val, _ = resident(load_dataset("digits", seed=0))
    _, other_val, other_test = resident(load_dataset("digits", seed=1))
    assert len(train) + len(val) + len(test) == 1797
    assert len(test) == 359 and len(val) == 144
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (1, 8, 8)
    assert train.y.dtype == torch.int64 and int(train.x.max()) == 255
    assert (bundle.kind, bundle.num_classes) == ("image", 10)
    assert (bundle.in_channels, bundle.image_size) == (1, 8)
    assert len(bundle.mean) == len(bundle.std) == 1 and 0 < bundle.mean[0] < 1
    # Stratified: each class's share of val matches its share of train+val within one sample.
    pool = torch.bincount(torch.cat([train.y, val.y]), minlength=10)
    expected = len(val) * pool / pool.sum()
    assert (torch.bincount(val.y, minlength=10) - expected).abs().max() < 1
    assert torch.equal(val.x, same_val.x) and torch.equal(val.y, same_val.y)
    assert not torch.equal(val.x, other_val.x)
    assert torch.equal(test.x, other_test.x) and torch.equal(test.y, other_test.y)


def test_digits_tabular_standardised_with_train_statistics() -> None:
    bundle = load_dataset("digits_tabular", seed=2)
    train, val, test = resident(bundle)
    assert (bundle.kind, bundle.in_channels, bundle.image_size) == ("tabular", 64, 0)
    assert bundle.mean == () and bundle.std == ()
    assert train.x.dtype == torch.float32 and train.x.shape == (len(train), 64)
    assert torch.isfinite(train.x).all() and torch.isfinite(test.x).all()
    assert train.x.mean(0).abs().max() < 1e-4
    std = train.x.std(0, unbiased=False)
    varying = std > 0  # digits has always-blank pixels; they stay at 0
    assert torch.allclose(std[varying], torch.ones(int(varying.sum())), atol=1e-4)
    _, image_val, _ = resident(load_dataset("digits", seed=2))
    assert torch.equal(image_val.y, val.y)  # the same rows as the image version


def test_covtype_with_fake_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sklearn.datasets

    rng = np.random.default_rng(0)
    fake = SimpleNamespace(data=rng.normal(size=(140, 54)) * 10 + 3, target=np.arange(140) % 7 + 1)
    calls: list[dict[str, Any]] = []

    def fetch(**kwargs: Any) -> SimpleNamespace:
        calls.append(kwargs)
        return fake

    monkeypatch.setattr(sklearn.datasets, "fetch_covtype", fetch)
    bundle = load_dataset("covtype", data_dir=tmp_path, seed=1)
    train, val, test = resident(bundle)
    assert calls == [{"data_home": str(tmp_path), "download_if_missing": False}]
    assert (bundle.kind, bundle.num_classes, bundle.in_channels) == ("tabular", 7, 54)
    assert len(test) == 28 and len(train) + len(val) == 112
    assert sorted(set(test.y.tolist())) == list(range(7))  # labels 1..7 -> 0..6
    assert train.x.dtype == torch.float32 and train.x.mean(0).abs().max() < 1e-4


def test_covtype_not_cached_without_download(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"covtype is not cached in data_dir '{tmp_path}'")
    ):
        load_dataset("covtype", data_dir=tmp_path)


# ----------------------------------------------------------------------------- file formats


def test_cifar10_round_trip_and_splits(tmp_path: Path) -> None:
    write_cifar(tmp_path, hundred=False, n_train=50, n_test=10)
    bundle = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, seed=0)
    train, val, test = resident(bundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert train.x.shape == (40, 3, 32, 32) and train.x.dtype == torch.uint8
    assert len(val) == 10 and sorted(val.y.tolist()) == list(range(10))
    assert (train.x[:, 1, 2, 5] == 200).all() and (train.x[:, 1, 5, 2] == 0).all()
    train_ids, val_ids = _ids(train), _ids(val)
    assert set(train_ids).isdisjoint(val_ids) and sorted(train_ids + val_ids) == list(range(50))
    assert train.y.tolist() == [i % 10 for i in train_ids]  # labels stay with their image
    assert _ids(test) == list(range(200, 210))
    _, other_val, other_test = resident(
        load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.2, seed=1)
    )
    assert set(_ids(other_val)) != set(val_ids)
    assert torch.equal(other_test.x, test.x)


def test_cifar100_round_trip(tmp_path: Path) -> None:
    write_cifar(tmp_path, hundred=True, n_train=120, n_test=5)
    bundle = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.1)
    train, val, test = resident(bundle)
    assert bundle.num_classes == 100 and len(test) == 5
    assert len(train) + len(val) == 120 and len(val) == 12
    assert val.y.tolist() == [i % 100 for i in _ids(val)]
    assert (test.x[:, 1, 2, 5] == 200).all()


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path, hundred=False, n_train=50, n_test=10)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps({"data": print, "labels": []}))  # a global it must not load
    with pytest.raises(
        ConfigError, match=re.escape(f"{target} is not a readable CIFAR batch") + ".*builtins"
    ):
        load_dataset("cifar10", data_dir=tmp_path)


def test_stl10_column_major_orientation(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    bundle = load_dataset("stl10", data_dir=tmp_path, val_fraction=0.5)
    train, val, test = resident(bundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 96)
    assert len(train) == len(val) == 10 and _ids(test) == list(range(100, 110))
    for split in (train, val, test):
        assert (split.x[:, 1, 0, 5] == 255).all() and (split.x[:, 1, 5, 0] == 0).all()
        assert split.y.tolist() == [i % 10 for i in _ids(split)]  # labels 1..10 -> 0..9
    small = load_dataset("stl10", data_dir=tmp_path, image_size=48)
    assert resident(small)[0].x.shape[1:] == (3, 48, 48) and small.image_size == 48


def test_fashion_mnist_idx_round_trip_and_subset(tmp_path: Path) -> None:
    write_fashion(tmp_path / "gz")
    bundle = load_dataset("fashion_mnist", data_dir=tmp_path / "gz", seed=3)
    train, val, test = resident(bundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert len(train) == 27 and len(val) == 3 and len(test) == 10
    assert (train.x[:, 0, 3, 7] == 77).all() and (train.x[:, 0, 7, 3] == 0).all()
    assert train.y.tolist() == [i % 10 for i in _ids(train)]
    sub_train, sub_val, _ = resident(
        load_dataset("fashion_mnist", data_dir=tmp_path / "gz", seed=3, max_train_samples=10)
    )
    assert len(sub_train) == 10 and sorted(sub_train.y.tolist()) == list(range(10))
    assert set(_ids(sub_train)) <= set(_ids(train))
    assert torch.equal(sub_val.x, val.x)  # the subset is drawn after the hold-out
    write_fashion(tmp_path / "plain", gz=False)  # uncompressed files are accepted too
    plain = load_dataset("fashion_mnist", data_dir=tmp_path / "plain", seed=3)
    assert torch.equal(resident(plain)[0].x, train.x)


def test_imagefolder_resident_and_streaming_agree(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, val_fraction=0.25)
    train, _, test = resident(bundle)
    assert train.x.shape == (12, 3, 16, 16)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (2, 3, 16)
    cats = train.x[train.y == 0][:, :, 1:]  # 'cat' sorts first; row 0 holds the id
    grey = (cats[:, 0] == cats[:, 1]).flatten(1).all(1)  # the greyscale PNG, now RGB
    assert grey.sum() <= 1 and (cats[~grey][:, 0] == 255).all() and (cats[~grey][:, 2] == 0).all()
    assert (test.x[test.y == 1][:, 2, 1:, :] == 255).all()  # dogs are blue
    streaming = load_dataset(
        "imagefolder", data_dir=tmp_path, image_size=16, val_fraction=0.25, max_resident_bytes=1
    )
    assert isinstance(streaming.train, StreamingSplit) and len(streaming.train) == 12
    assert not hasattr(streaming.train, "x")
    gen = torch.Generator().manual_seed(0)
    for res, stream in zip(
        resident(bundle), (streaming.train, streaming.val, streaming.test), strict=True
    ):
        assert isinstance(stream, StreamingSplit)
        batches = list(stream.iter_batches(5, gen, shuffle=True, drop_last=False))
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16) and y.dtype == torch.int64
        assert Counter(y.tolist()) == Counter(res.y.tolist())
        pairs = sorted(zip(x[:, 1, 0, 0].tolist(), y.tolist(), strict=True))
        assert pairs == sorted(zip(res.x[:, 1, 0, 0].tolist(), res.y.tolist(), strict=True))
    assert streaming.mean == pytest.approx(bundle.mean)
    assert streaming.std == pytest.approx(bundle.std)


def test_the_digest_names_exactly_the_rows_a_trial_sees(tmp_path: Path) -> None:
    """Stable across loads (a fresh bundle, no cache), changed by the seed's hold-out and by the
    training subset; a streamed ImageFolder is hashed by its listing, and a file added shows."""
    from sslsearch.data.digest import dataset_digest, dataset_of, dataset_result, split_sizes

    base = load_dataset("digits", seed=0)
    digest = dataset_digest(base)
    assert len(digest) == 16 and dataset_digest(load_dataset("digits", seed=0)) == digest
    assert dataset_digest(load_dataset("digits", seed=1)) != digest
    assert dataset_digest(load_dataset("digits", seed=0, max_train_samples=100)) != digest
    assert dataset_of(dataset_result(base)) == {"name": "digits", "digest": digest,
                                                "splits": split_sizes(base)}
    assert dataset_of({"val_knn_acc": 0.5}) is None  # a result from before the digest
    write_imagefolder(tmp_path, n_train=4, n_test=2)
    streamed = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, max_resident_bytes=0)
    assert isinstance(streamed.train, StreamingSplit)
    before = dataset_digest(streamed)
    again = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, max_resident_bytes=0)
    assert dataset_digest(again) == before
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(tmp_path / "test" / "dog" / "new.png")
    grown = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, max_resident_bytes=0)
    assert dataset_digest(grown) != before


def test_streaming_leaves_global_rng_alone(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, n_train=2, n_test=1)
    bundle = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, max_resident_bytes=0)
    assert isinstance(bundle.test, StreamingSplit)
    state = torch.get_rng_state()
    batches = list(bundle.test.iter_batches(2, None, shuffle=False, drop_last=False))
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(y) for _, y in batches] == [2]


# ----------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("name", ["cifar10", "stl10", "fashion_mnist"])
def test_download_falls_back_to_torchvision(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With download: true and no files, the torchvision class is asked to fetch them into
    data_dir (faked here: it writes the fixture), then the files are read as usual."""
    import torchvision.datasets

    calls: list[dict[str, Any]] = []

    def fake(root: str, **kwargs: Any) -> None:
        calls.append(kwargs)
        if name == "cifar10":
            write_cifar(Path(root), hundred=False, n_train=50, n_test=10)
        elif name == "stl10":
            write_stl10(Path(root))
        else:
            write_fashion(Path(root) / "FashionMNIST" / "raw")  # torchvision's layout

    cls = {"cifar10": "CIFAR10", "stl10": "STL10", "fashion_mnist": "FashionMNIST"}[name]
    monkeypatch.setattr(torchvision.datasets, cls, fake)
    bundle = load_dataset(name, data_dir=tmp_path / "new", download=True)
    assert len(calls) == 1 and calls[0]["download"] is True
    assert len(bundle.train) > 0 and len(bundle.test) == 10

    def broken(root: str, **kwargs: Any) -> None:
        raise RuntimeError("File not found or corrupted.\nYou can use download=True")

    monkeypatch.setattr(torchvision.datasets, cls, broken)
    target = tmp_path / "other"
    with pytest.raises(
        ConfigError,
        match=re.escape(f"could not download {name} into data_dir '{target}': File not found"),
    ):
        load_dataset(name, data_dir=target, download=True)


# ----------------------------------------------------------------------------- caching


def test_load_dataset_cached_resolves_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion(tmp_path / "fm")
    monkeypatch.chdir(tmp_path)
    first = data.load_dataset_cached("fashion_mnist", data_dir="fm")
    again = data.load_dataset_cached("fashion_mnist", data_dir=tmp_path / "fm")
    assert isinstance(first, DataBundle) and first is again
    assert data.load_dataset_cached("fashion_mnist", data_dir="fm", seed=1) is not first


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="dataset 'cifar11' is unknown; choose one of: digits"):
        load_dataset("cifar11")
    assert "covtype" in DATASETS


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6, 1.0])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match=f"val_fraction {fraction!r} for digits"):
        load_dataset("digits", val_fraction=fraction)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "fashion_mnist", "imagefolder",
                                  "speech_commands"])
def test_missing_and_empty_data_dir(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        ConfigError, match=re.escape(f"data_dir '{missing}' for {name} does not exist")
    ):
        load_dataset(name, data_dir=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        ConfigError, match=re.escape(f"data_dir '{empty}' for {name} is empty; expected")
    ):
        load_dataset(name, data_dir=empty)


def test_data_dir_required_without_default() -> None:
    with pytest.raises(ConfigError, match="dataset 'cifar10' needs data_dir"):
        load_dataset("cifar10")


def test_missing_single_file_is_named(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(ConfigError, match=r"is missing stl10_binary/test_y\.bin"):
        load_dataset("stl10", data_dir=tmp_path)
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        ConfigError, match=r"missing t10k-labels-idx1-ubyte\.gz .*dataset-fashion-mnist"
    ):
        load_dataset("fashion_mnist", data_dir=tmp_path / "fm")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda blob: gzip.compress(gzip.decompress(blob)[:-100]), "is truncated or corrupt"),
        (lambda blob: blob[: len(blob) // 2], "is not a readable idx file"),
        (lambda blob: b"not gzip at all", "is not a readable idx file"),
        (
            lambda blob: gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(blob)[4:]),
            "magic number 2049; expected 2051",
        ),
    ],
)
def test_corrupt_idx_file(tmp_path: Path, damage: Any, message: str) -> None:
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match=re.escape(str(path)) + f" .*{message}"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_corrupt_stl_file(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ConfigError, match=re.escape(str(path)) + " holds .* bytes"):
        load_dataset("stl10", data_dir=tmp_path)


def test_other_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_train_samples 0 for digits"):
        load_dataset("digits", max_train_samples=0)
    with pytest.raises(ConfigError, match="image_size 32 does not apply to digits_tabular"):
        load_dataset("digits_tabular", image_size=32)
    with pytest.raises(ConfigError, match="device 'gpu0' is not a torch device"):
        load_dataset("digits", device="gpu0")
    write_imagefolder(tmp_path)
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "wolf")
    with pytest.raises(ConfigError, match="has classes"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=16)


# ----------------------------------------------------------------------------- real data


def test_debian_fashion_mnist() -> None:
    if not FASHION_DEBIAN.is_dir():
        pytest.skip(
            "Debian package dataset-fashion-mnist not installed: "
            "apt-get install dataset-fashion-mnist"
        )
    full = load_dataset("fashion_mnist")  # DEFAULT_DATA_DIRS points at the Debian folder
    train, val, test = resident(full)
    assert len(train) + len(val) == 60000 and len(test) == 10000
    assert len(val) == 6000 and torch.bincount(val.y).tolist() == [600] * 10
    assert full.mean[0] == pytest.approx(0.286, abs=0.002)  # the dataset's well-known statistics
    assert full.std[0] == pytest.approx(0.353, abs=0.002)
    small_train, small_val, small_test = resident(
        load_dataset("fashion_mnist", max_train_samples=1000)
    )
    assert len(small_train) == 1000 and torch.bincount(small_train.y).tolist() == [100] * 10
    assert torch.equal(small_val.y, val.y) and len(small_test) == 10000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_stay_on_the_device(tmp_path: Path) -> None:
    train, _, _ = resident(load_dataset("digits", device="cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, y = next(train.iter_batches(64, gen, shuffle=True, drop_last=True))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8 and x.shape[0] == 64
    write_imagefolder(tmp_path)
    streaming = load_dataset("imagefolder", data_dir=tmp_path, device="cuda", max_resident_bytes=0)
    x, y = next(streaming.train.iter_batches(4, gen, shuffle=True, drop_last=False))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8
