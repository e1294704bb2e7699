"""The embedded Fashion-MNIST subset (dataset ``fashion_mnist_small``): a seeded, stratified
sample of Fashion-MNIST shipped inside the package, so the default experiment needs neither a
download nor a data_dir.

It lives in ``sslsearch/data/fashion-mnist-small/`` as the four gzip'd idx files of the
official layout, read by :func:`~sslsearch.data.formats.read_fashion_mnist` (the full dataset's
reader), beside Fashion-MNIST's MIT licence (``LICENSE``) and a ``README.md`` saying what was
drawn: :func:`subset`, :data:`N_TRAIN` training and :data:`N_TEST` test images per
:func:`~sslsearch.data.assemble.stratified_pick` with :data:`SEED`, each split in file order.
``python -m sslsearch.data.make_embedded`` writes it again from Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sslsearch.data.assemble import Raw, stratified_pick
from sslsearch.data.formats import read_fashion_mnist

# A folder name Python cannot import (the hyphens), so setuptools ships it as plain package data.
EMBEDDED_DIR = Path(__file__).resolve().parent / "fashion-mnist-small"
N_TRAIN = 4000  # 400 a class: the training images, val_fraction of them held out for validation
N_TEST = 1000  # 100 a class: the test split
SEED = 0


def read_fashion_mnist_small() -> Raw:
    """The embedded subset's training and test tensors, as :func:`read_fashion_mnist` reads the
    full dataset's."""
    return read_fashion_mnist(EMBEDDED_DIR, False)


def subset(full: Raw, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> Raw:
    """A stratified sample of ``full``'s training and test splits, each in file order: the
    training draw first, then the test draw, from one generator seeded with ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    train = stratified_pick(full.train_y, n_train, keep_one=False, rng=rng)
    test = stratified_pick(full.test_y, n_test, keep_one=False, rng=rng)
    return Raw(full.train_x[train], full.train_y[train], full.test_x[test], full.test_y[test],
               num_classes=full.num_classes)
