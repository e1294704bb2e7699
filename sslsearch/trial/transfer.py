"""A frozen encoder judged on another data set: the protocol of transfer and few-label tables.

An encoder trained on one data set (an sslsearch export, or a published checkpoint) is evaluated
on a *target* data set's own splits by the three measures a trial uses on its own data: the
weighted kNN (bank = the target's training split), the converged linear probe (weight decay chosen
on the target's validation split, test only reported) and, when asked, the few-label probes of
:mod:`sslsearch.trial.fewlabel`. Beside it, on the same splits, the two rows every accuracy here
stands next to: the target's **standardised raw pixels** and the **same architecture at random
initialisation** (seeded), fed exactly as the encoder is.

How target images reach an encoder trained elsewhere (:class:`Adaptation`, stated in every
result):

- **channels**: one → three by repeating the grey channel; three → one by the ITU-R BT.601 luma
  (0.299 R + 0.587 G + 0.114 B), what a grey camera would record; any other mismatch is refused;
- **size**: an antialiased bilinear resize of the uint8 images to the side the encoder was trained
  at (the target's own side where the encoder does not depend on it and none is recorded);
- **normalisation**: ``(x / 255 - mean) / std`` per channel with the statistics the encoder was
  trained with (the source data's for an export, ImageNet's for a torchvision checkpoint), or the
  target's own, as the caller chooses.

Torch only, like the training loop: the command that loads encoders and logs to MLflow is
:mod:`sslsearch.evaluate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sslsearch.data import DataBundle
from sslsearch.data.assemble import resize
from sslsearch.errors import ConfigError
from sslsearch.trial.augment import normalize
from sslsearch.trial.baselines import raw_features
from sslsearch.trial.evaluation import accuracy, extract, knn_predict, linear_probe
from sslsearch.trial.fewlabel import DRAWS, FewLabelResult, few_label_probes

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: three channels to one
ROWS = ("encoder", "random_init", "raw_pixels")


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """How the target's images are fed to the encoder (module docstring)."""

    channels_from: int
    channels_to: int
    size_from: int
    size_to: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalisation: str  # "source", "imagenet" or "target": whose statistics

    def describe(self) -> str:
        parts = []
        if self.channels_from != self.channels_to:
            how = "repeated" if self.channels_from == 1 else "BT.601 luma"
            parts.append(f"channels {self.channels_from} → {self.channels_to} ({how})")
        if self.size_from != self.size_to:
            parts.append(f"resized {self.size_from} → {self.size_to} px (antialiased bilinear)")
        parts.append(f"normalised with the {self.normalisation} statistics")
        return "; ".join(parts)

    def __call__(self, x: Tensor) -> Tensor:
        """A batch of the target's uint8 images, as the encoder expects its input."""
        if self.channels_from == 1 and self.channels_to == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.channels_from == 3 and self.channels_to == 1:
            luma = torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)
            x = (x.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        if self.size_from != self.size_to:
            x = resize(x.contiguous(), self.size_to)
        return normalize(x, self.mean, self.std)


def adaptation(data: DataBundle, *, channels: int, size: int | None,
               stats: tuple[Sequence[float], Sequence[float]] | None,
               normalisation: str) -> Adaptation:
    """The :class:`Adaptation` from ``data`` to an encoder taking ``channels`` at side ``size``
    (None: the target's own) normalised with ``stats`` (None: the target's own statistics,
    converted to the encoder's channels)."""
    if data.kind != "image":
        raise ConfigError(f"dataset {data.name}: transfer evaluation takes image data; "
                          f"{data.name} is {data.kind}")
    c = int(data.in_channels)
    if c != channels and {c, channels} != {1, 3}:
        raise ConfigError(f"dataset {data.name} has {c} channels and the encoder takes "
                          f"{channels}: only 1 ↔ 3 can be adapted")
    if stats is None:
        mean, std = _converted(data.mean, c, channels), _converted(data.std, c, channels)
        normalisation = "target"
    else:
        mean, std = tuple(map(float, stats[0])), tuple(map(float, stats[1]))
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"normalisation statistics have {len(mean)} channels; the encoder "
                              f"takes {channels}")
    return Adaptation(c, channels, int(data.image_size), int(size or data.image_size),
                      mean, std, normalisation)


def _converted(values: Sequence[float], c_from: int, c_to: int) -> tuple[float, ...]:
    if c_from == c_to:
        return tuple(map(float, values))
    if c_from == 1:
        return (float(values[0]),) * c_to
    return (float(sum(w * v for w, v in zip(LUMA, values, strict=True))),)


@dataclasses.dataclass
class RowResult:
    """One row of the table: an encoder (or the raw pixels) on the target's splits."""

    name: str
    val_knn_acc: float
    test_knn_acc: float
    probe_val_acc: float
    probe_test_acc: float
    probe_weight_decay: float
    few_label: list[FewLabelResult] = dataclasses.field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        out = {k: float(v) for k, v in dataclasses.asdict(self).items()
               if k not in ("name", "few_label")}
        for r in self.few_label:
            out.update(r.metrics())
        return out


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The evaluation's settings: kNN's k and temperature, the probe's iterations, few labels."""

    knn_k: int = 200
    knn_t: float = 0.1
    probe_max_iter: int = 500
    few_label: bool = True
    draws: int = DRAWS
    seed: int = 0


def judge(name: str, features: Callable[[Any], tuple[Tensor, Tensor]], data: DataBundle,
          protocol: Protocol) -> RowResult:
    """kNN, linear probe and few-label probes of ``features`` (a split → (features, labels))."""
    train, val, test = (features(s) for s in (data.train, data.val, data.test))

    def knn(query: tuple[Tensor, Tensor]) -> float:
        pred = knn_predict(train[0], train[1], query[0], data.num_classes, k=protocol.knn_k,
                           temperature=protocol.knn_t)
        return float(accuracy(pred, query[1]))

    result = linear_probe(train, val, test, data.num_classes, max_iter=protocol.probe_max_iter)
    few = (few_label_probes(train, val, test, data.num_classes, draws=protocol.draws,
                            seed=protocol.seed, max_iter=protocol.probe_max_iter)
           if protocol.few_label else [])
    return RowResult(name, knn(val), knn(test), result.val_acc, result.test_acc,
                     result.weight_decay, few)


def encoder_features(encoder: nn.Module, adapt: Adaptation, batch_size: int = 512
                     ) -> Callable[[Any], tuple[Tensor, Tensor]]:
    """A split → the frozen ``encoder``'s features of its adapted images, in eval mode."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)

    def features(split: Any) -> tuple[Tensor, Tensor]:
        return extract(lambda x: encoder(adapt(x)),
                       split.iter_batches(batch_size, None, shuffle=False, drop_last=False))

    return features


def transfer_table(encoder: nn.Module, random_init: nn.Module, data: DataBundle,
                   adapt: Adaptation, protocol: Protocol) -> list[RowResult]:
    """The three rows of :data:`ROWS` on ``data``'s splits, the two encoders fed by ``adapt``."""
    raw = _standardise(raw_features, data)
    return [judge("encoder", encoder_features(encoder, adapt), data, protocol),
            judge("random_init", encoder_features(random_init, adapt), data, protocol),
            judge("raw_pixels", raw, data, protocol)]


def _standardise(features: Callable[[Any], tuple[Tensor, Tensor]], data: DataBundle
                 ) -> Callable[[Any], tuple[Tensor, Tensor]]:
    """Raw pixels standardised with the training split's statistics, as the trial's baseline
    does (:func:`sslsearch.trial.baselines.raw_pixel_baseline`), so kNN's cosine sees the same
    features the probe does."""
    x_tr, _ = features(data.train)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6

    def standardised(split: Any) -> tuple[Tensor, Tensor]:
        x, y = features(split)
        return (x - mean) / std, y

    return standardised


def markdown(rows: Sequence[RowResult], *, title: str = "") -> str:
    """The table a user reads: each row's kNN and probe accuracies, then the few-label ones."""
    few_names = [r.name for r in rows[0].few_label] if rows else []
    head = ["row", "val kNN", "test kNN", "probe val", "probe test",
            *[n.replace("_", " ") for n in few_names]]
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name.replace("_", " "), *(f"{v * 100:.2f}" for v in (
            r.val_knn_acc, r.test_knn_acc, r.probe_val_acc, r.probe_test_acc))]
        cells += [f"{f.mean * 100:.2f} ± {f.sd * 100:.2f}" for f in r.few_label]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
