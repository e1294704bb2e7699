"""A data set's identity: one digest of the exact rows a trial trains, validates and tests on, and
the sizes of its splits.

Why a digest and not the name: the name says which files were read, not what the trial saw. The
validation hold-out follows the seed, ``max_train_samples`` keeps a subset, ``image_size``
resizes, and an ImageFolder is whatever its folder held that day. The digest changes with any of
them, so two MLflow runs (their Dataset column) or two exported encoders (their ``provenance``)
trained on the same data say so, and a silently changed folder shows.

This module owns the digest: the trainables put it in every result (``sslsearch.results.
dataset_result``), the export records it, the tracker logs it as the run's MLflow dataset input.
"""

import hashlib
import json
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from sslsearch.data.splits import DataBundle, Split, StreamingSplit

SPLITS = ("train", "val", "test")
# Hex characters kept: 64 bits tell data sets apart, and MLflow's dataset digest column holds 36.
DIGEST_CHARS = 16
_CHUNK_BYTES = 64 * 2**20  # a device-resident split is copied to the host this much at a time

# The keys of a trial's result that carry its data set: strings (the splits as JSON), so the
# tracker never logs them as metrics.
RESULT_KEYS = {"name": "dataset_name", "digest": "dataset_digest", "splits": "dataset_splits"}

# Per process, per bundle: the bundles are shared (sslsearch.data.load_dataset_cached), so a
# worker running trial after trial hashes its data once; weak keys never keep one alive.
_DIGESTS: "weakref.WeakKeyDictionary[DataBundle, str]" = weakref.WeakKeyDictionary()


def split_sizes(data: DataBundle) -> dict[str, int]:
    """Rows per split: ``{"train": n, "val": n, "test": n}``."""
    return {name: len(getattr(data, name)) for name in SPLITS}


def dataset_digest(data: DataBundle) -> str:
    """SHA-256 (its first :data:`DIGEST_CHARS` hex characters) over the three splits in order:
    each split's name and size, then each tensor's dtype, shape and bytes (images as the uint8
    pixels the trial sees, tables as their standardised float32 rows, labels as int64).

    A split streamed from an ImageFolder too large to hold is hashed by its listing instead (each
    file's class folder, name and byte size, and its label): reading every image again is what
    streaming avoids, so an image rewritten in place at the same size goes unseen.
    """
    known = _DIGESTS.get(data)
    if known is not None:
        return known
    h = hashlib.sha256()
    for name in SPLITS:
        split = getattr(data, name)
        h.update(f"{name}:{len(split)};".encode())
        if isinstance(split, Split):
            _hash_tensor(h, split.x)
            _hash_tensor(h, split.y)
        elif isinstance(split, StreamingSplit):
            for path, label in split.listing():
                p = Path(path)
                h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}:{label};".encode())
        else:  # a split type this function does not know would hash as empty: refuse it
            raise TypeError(f"dataset_digest: cannot hash a {type(split).__name__}")
    digest = h.hexdigest()[:DIGEST_CHARS]
    _DIGESTS[data] = digest
    return digest


def dataset_record(data: DataBundle) -> dict[str, Any]:
    """What identifies the data a trial ran on: ``{"name", "digest", "splits"}``."""
    return {"name": data.name, "digest": dataset_digest(data), "splits": split_sizes(data)}


def dataset_result(data: DataBundle) -> dict[str, str]:
    """:func:`dataset_record` as the keys of a trial's result (:data:`RESULT_KEYS`)."""
    record = dataset_record(data)
    return {RESULT_KEYS["name"]: record["name"], RESULT_KEYS["digest"]: record["digest"],
            RESULT_KEYS["splits"]: json.dumps(record["splits"])}


def dataset_of(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``{"name", "digest", "splits"}`` a trial's result carries; None for a result without
    them (a failure reported before the data loaded, results from before the digest)."""
    result = result or {}
    name, digest = result.get(RESULT_KEYS["name"]), result.get(RESULT_KEYS["digest"])
    if not isinstance(name, str) or not isinstance(digest, str):
        return None
    try:
        splits = json.loads(str(result.get(RESULT_KEYS["splits"], "{}")))
    except json.JSONDecodeError:
        splits = {}
    return {"name": name, "digest": digest, "splits": splits if isinstance(splits, dict) else {}}


def _hash_tensor(h: Any, t: Tensor) -> None:
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    if t.numel() == 0:
        return
    flat = t.detach().contiguous().reshape(-1)
    step = max(1, _CHUNK_BYTES // flat.element_size())
    for start in range(0, flat.numel(), step):
        h.update(flat[start : start + step].cpu().numpy())
