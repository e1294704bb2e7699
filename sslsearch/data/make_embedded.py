"""Regenerate the embedded Fashion-MNIST subset (:mod:`sslsearch.data.embedded`) from the full
dataset's idx files, deterministically: the same source files give the same bytes::

    python -m sslsearch.data.make_embedded                 # from Debian's dataset-fashion-mnist
    python -m sslsearch.data.make_embedded --source DIR --out DIR

The four files are gzip'd at level 9 with no file name and no time stamp in their headers.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor

from sslsearch.data.assemble import Raw
from sslsearch.data.embedded import EMBEDDED_DIR, subset
from sslsearch.data.formats import read_fashion_mnist

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049  # idx: unsigned bytes, 3 and 1 dimensions


def idx_bytes(array: Tensor, magic: int) -> bytes:
    """An idx file: its magic number and big-endian dimensions, then the uint8 values."""
    header = struct.pack(f">I{array.dim()}I", magic, *array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def write(raw: Raw, out: Path) -> list[Path]:
    """``raw``'s four idx files, gzip'd, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    blobs = (idx_bytes(raw.train_x.squeeze(1), _IMAGES_MAGIC),
             idx_bytes(raw.train_y, _LABELS_MAGIC),
             idx_bytes(raw.test_x.squeeze(1), _IMAGES_MAGIC),
             idx_bytes(raw.test_y, _LABELS_MAGIC))
    paths = []
    for stem, blob in zip(_STEMS, blobs, strict=True):
        path = out / f"{stem}.gz"
        with path.open("wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                                 compresslevel=9, mtime=0) as gz:
            gz.write(blob)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sslsearch.data.make_embedded",
                                description="Regenerate the embedded Fashion-MNIST subset.")
    p.add_argument("--source", type=Path, default=DEBIAN_DIR,
                   help=f"the full dataset's four idx files; default: {DEBIAN_DIR}")
    p.add_argument("--out", type=Path, default=EMBEDDED_DIR,
                   help=f"where the subset's four .gz files go; default: {EMBEDDED_DIR}")
    args = p.parse_args(argv)
    for path in write(subset(read_fashion_mnist(args.source, False)), args.out):
        print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
