"""The baselines every trial is reported against: the raw input and the untrained encoder.

A representation is worth having only if it beats the input it came from. For each dataset split
this module computes, once per process, the same kNN monitor and linear probe that judge trained
encoders, applied to the **standardised raw pixels** (each pixel standardised with training
statistics; tabular rows are already standardised). Trials then report, beside their own
accuracies:

- ``raw_knn_acc`` / ``raw_test_knn_acc``: weighted kNN (the trial's k and T) on raw pixels,
  validation / test split;
- ``raw_probe_acc`` / ``raw_probe_test_acc``: the linear probe on raw pixels, validation / test
  (when the trial runs a probe);
- ``init_knn_acc``: validation kNN of the trial's own encoder at random initialisation (computed
  in :mod:`sslsearch.train`, before the first step).

Images larger than 32 px are area-averaged to 32 px first, so the baseline's memory stays bounded
(3·32² features) on ImageFolders; ≤ 32 px datasets (digits, Fashion-MNIST, CIFAR) use every pixel.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.results import INIT_KEY, RAW_KEYS
from sslsearch.trial.evaluation import accuracy, knn_predict, linear_probe

__all__ = ["INIT_KEY", "MAX_RAW_SIDE", "RAW_KEYS", "raw_features", "raw_pixel_baseline"]
MAX_RAW_SIDE = 32  # larger images are area-averaged to this side for the raw baseline

# DataBundle -> {(knn_k, knn_t, probe_max_iter or 0): metrics}; weak, so a dropped dataset frees it.
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[int, float, int], dict[str, float]]] = (
    weakref.WeakKeyDictionary())


def _raw(x: Tensor) -> Tensor:
    """A batch as flat float features: images /255 (area-averaged to ≤ 32 px), rows as they are."""
    if x.dim() == 2:
        return x.float()
    v = x.float() / 255.0
    if max(v.shape[-2:]) > MAX_RAW_SIDE:
        v = F.adaptive_avg_pool2d(v, MAX_RAW_SIDE)
    return v.flatten(1)


def _gather(batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*((_raw(x), y) for x, y in batches), strict=True)
    return torch.cat(xs), torch.cat(ys)


def raw_features(split: Any, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """(features N × D, labels) of a split's raw inputs (see the module docstring)."""
    with torch.no_grad():
        return _gather(iter(split.iter_batches(batch_size, None, shuffle=False, drop_last=False)))


def raw_pixel_baseline(data: Any, *, knn_k: int, knn_t: float,
                       probe_max_iter: int | None) -> dict[str, float]:
    """kNN and (when ``probe_max_iter`` is given) linear-probe accuracies of standardised raw
    inputs of ``data`` (a :class:`~sslsearch.data.DataBundle`); cached per dataset and setting."""
    key = (knn_k, knn_t, probe_max_iter or 0)
    cached = _CACHE.setdefault(data, {})
    if key in cached:
        return dict(cached[key])
    train, val, test = (raw_features(s) for s in (data.train, data.val, data.test))
    mean, std = train[0].mean(0), train[0].std(0) + 1e-6  # standardised, as the probe does

    def knn(query: tuple[Tensor, Tensor]) -> float:
        pred = knn_predict((train[0] - mean) / std, train[1], (query[0] - mean) / std,
                           data.num_classes, k=knn_k, temperature=knn_t)
        return float(accuracy(pred, query[1]))

    out = {"raw_knn_acc": knn(val), "raw_test_knn_acc": knn(test)}
    if probe_max_iter is not None:
        result = linear_probe(train, val, test, data.num_classes, max_iter=probe_max_iter)
        out.update(raw_probe_acc=result.val_acc, raw_probe_test_acc=result.test_acc)
    cached[key] = out
    return dict(out)
