"""Label efficiency: the linear probe trained on a few labels, as SSL papers report it.

Two protocols, each averaged over seeded draws of the labelled images (the spread between draws
is as large as the differences between methods at 1 or 5 labels a class):

- **k labels per class** (``shots``): k training images of each class, drawn without replacement
  (all of a class that has fewer);
- **a fraction of the labels** (``fractions``, 1 % and 10 % in SimCLR and BYOL): that share of
  each class, at least one image a class, so the draw keeps the class balance of the split.

Each draw trains :func:`sslsearch.trial.evaluation.linear_probe` (features standardised on the drawn
images, the weight decay chosen on the validation split, converged L-BFGS) and scores it on the
test split. The validation split is the full one: a user with k labels a class would have fewer
to choose the weight decay on, so these accuracies are upper bounds by that choice. Draw ``d``
of a setting uses the generator seed ``seed + d``: the same images for every encoder evaluated
with the same seed, so differences between encoders are paired draw by draw.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import torch
from torch import Tensor

from sslsearch.trial.evaluation import linear_probe

SHOTS = (1, 5, 10, 100)  # labelled images per class
FRACTIONS = (0.01, 0.1)  # of each class's training images
DRAWS = 5


@dataclasses.dataclass(frozen=True)
class FewLabelResult:
    """One setting over its draws: test (and validation) accuracy of each draw."""

    name: str  # "5_per_class", "1pct"
    labels: int  # labelled images in each draw
    test_accs: tuple[float, ...]
    val_accs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.test_accs)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.test_accs) if len(self.test_accs) > 1 else 0.0

    def metrics(self) -> dict[str, float]:
        """As a trial reports them: ``few_label_<name>_test_acc`` (mean) and ``..._sd``."""
        key = f"few_label_{self.name}_test_acc"
        return {key: self.mean, f"{key}_sd": self.sd}


def setting_name(shots: int | None = None, fraction: float | None = None) -> str:
    if shots is not None:
        return f"{shots}_per_class"
    assert fraction is not None
    return f"{fraction * 100:g}pct".replace(".", "p")


def draw(labels: Tensor, *, shots: int | None = None, fraction: float | None = None,
         seed: int = 0) -> Tensor:
    """Indices of a seeded, class-stratified draw from ``labels``: ``shots`` of each class, or
    ``fraction`` of each (rounded, at least one). Sorted, on the CPU."""
    if (shots is None) == (fraction is None):
        raise ValueError("give one of shots or fraction")
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be ≥ 1, found {shots}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], found {fraction}")
    gen = torch.Generator().manual_seed(seed)
    y = labels.cpu()
    picked = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        take = shots if shots is not None else max(1, round((fraction or 0.0) * len(idx)))
        order = torch.randperm(len(idx), generator=gen)
        picked.append(idx[order[:min(take, len(idx))]])
    return torch.sort(torch.cat(picked)).values


def few_label_probes(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                     test: tuple[Tensor, Tensor], num_classes: int, *,
                     shots: Sequence[int] = SHOTS, fractions: Sequence[float] = FRACTIONS,
                     draws: int = DRAWS, seed: int = 0, max_iter: int = 500
                     ) -> list[FewLabelResult]:
    """Every setting of ``shots`` and ``fractions`` over ``draws`` seeded draws (module
    docstring); features precomputed (frozen encoder). A setting that would take every
    training image (k at least the largest class) is left out: it is the full probe."""
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, found {draws}")
    x, y = train
    largest = int(torch.bincount(y.cpu()).max())
    settings: list[tuple[int | None, float | None]] = [(k, None) for k in shots if k < largest]
    settings += [(None, f) for f in fractions if f < 1]
    out = []
    for k, f in settings:
        tests, vals, n = [], [], 0
        for d in range(draws):
            idx = draw(y, shots=k, fraction=f, seed=seed + d).to(x.device)
            n = len(idx)
            r = linear_probe((x[idx], y[idx]), val, test, num_classes, max_iter=max_iter)
            tests.append(r.test_acc)
            vals.append(r.val_acc)
        out.append(FewLabelResult(setting_name(k, f), n, tuple(tests), tuple(vals)))
    return out


def markdown(results: Sequence[FewLabelResult], draws: int) -> str:
    """A table: each setting's labelled images and test accuracy, mean ± sd over the draws."""
    lines = [f"| labels | images | test acc (mean ± sd, {draws} draws) |", "|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name.replace('_', ' ')} | {r.labels} | "
                     f"{r.mean * 100:.2f} ± {r.sd * 100:.2f} |")
    return "\n".join(lines) + "\n"
