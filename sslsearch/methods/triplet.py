"""Triplet loss (Schroff, Kalenichenko & Philbin, 2015, "FaceNet: A Unified Embedding for Face
Recognition and Clustering") with in-batch mining, as a two-view SSL method.

Anchors are the first views, and every candidate (positive or negative) is a second-view embedding:
the triplets are cross-view, as the anchor–positive pair is. Without labels the positive is the
other view of the same image and the negatives are the other images; with labels (``use_labels``)
positives and negatives are defined by class, and the method becomes supervised.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss

MININGS = ("hardest", "semihard")


@dataclasses.dataclass(frozen=True)
class Config:
    # α. FaceNet uses 0.2 (squared distances of unit vectors lie in [0, 4]); 0.5 learns as well on
    # digits images (kNN gain +0.023/+0.019 vs +0.019/+0.021, seeds 0/1) and, unlike 0.2, leaves
    # some triplets active at init on tabular data, whose two views are identical (d_ap = 0).
    margin: float = 0.5
    # Picks the negative: "hardest" or "semihard" (see triplet_loss). Semi-hard, as FaceNet advises
    # (§3.2: hardest negatives "can result in a collapsed model"): measured on digits, hardest
    # collapses the projector (loss stuck at α, embedding std ratio ≈ 0.1), semi-hard does not.
    mining: str = "semihard"
    use_labels: bool = False  # True: positives/negatives by class label → the method is supervised
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128  # FaceNet: a 128-d unit-norm embedding

    def check(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin must be ≥ 0, found {self.margin}")
        if self.mining not in MININGS:
            raise ValueError(f"mining must be one of {', '.join(MININGS)}, found {self.mining!r}")


@fp32_loss
def triplet_loss(z1: Tensor, z2: Tensor, margin: float, labels: Tensor | None = None,
                 mining: str = "hardest") -> Tensor:
    """FaceNet's triplet loss with in-batch mining, ``L = 1/N Σ_i max(0, d_ap(i) − d_an(i) + α)``.

    On L2-normalised rows, ``d(i, j) = ‖z1_i − z2_j‖²`` (N × N). For anchor ``z1_i``:

    - positive: ``labels=None``: ``z2_i`` (the other view); with labels: the hardest (farthest)
      ``z2_j`` with ``labels_j = labels_i`` (``j = i`` included), ``d_ap = max_j d(i, j)``;
    - negative candidates: ``z2_j`` with ``j ≠ i`` (``labels=None``) or ``labels_j ≠ labels_i``;
    - ``mining="hardest"``: ``d_an = min_j d(i, j)`` over the candidates (the closest negative);
    - ``mining="semihard"``: the closest candidate inside the band ``d_ap < d(i, j) < d_ap + α``
      (farther than the positive, yet still violating the margin); when the band is empty (always
      so at α = 0), the hardest negative as above.

    An anchor without any negative (one class in the batch) contributes 0. Any other ``mining``
    raises ValueError. Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {', '.join(MININGS)}, found {mining!r}")
    n = z1.shape[0]
    a = F.normalize(z1, dim=1)  # a: N x d
    b = F.normalize(z2, dim=1)  # b: N x d
    # ‖a − b‖² = 2 − 2 a·b on unit vectors; the clamp removes rounding below 0.
    dist = (2 - 2 * a @ b.T).clamp_min(0)  # dist: N x N
    if labels is None:
        positives = torch.eye(n, dtype=torch.bool, device=a.device)  # positives: N x N
    else:
        positives = labels[:, None] == labels[None, :]  # positives: N x N
    negatives = ~positives
    d_ap = dist.masked_fill(~positives, float("-inf")).amax(dim=1)  # d_ap: N
    hardest = dist.masked_fill(~negatives, float("inf")).amin(dim=1)  # hardest: N
    if mining == "hardest":
        d_an = hardest
    else:
        band = negatives & (dist > d_ap[:, None]) & (dist < d_ap[:, None] + margin)  # N x N
        semihard = dist.masked_fill(~band, float("inf")).amin(dim=1)  # semihard: N
        d_an = torch.where(band.any(dim=1), semihard, hardest)  # d_an: N
    # No negative: d_an = +inf, the hinge gives 0 (and a zero gradient).
    return F.relu(d_ap - d_an + margin).mean()


class Method(BaseMethod):
    """Triplet: SimCLR-sized projector, FaceNet's triplet loss on cross-view in-batch triplets.

    Several workers: the projections (with their gradients) and labels of every worker are
    gathered, so each anchor's hardest or semi-hard negative is mined from the GLOBAL batch, and
    every worker computes the same global loss (:mod:`sslsearch.parts.distributed`); BatchNorm sees
    the global batch.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        # The base declares `supervised` a ClassVar; here it depends on the config, so the
        # instance shadows it (read it from the instance, not the class).
        self.supervised = cfg.use_labels  # type: ignore[misc]
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        z1, z2 = self.group.gather(z1), self.group.gather(z2)  # z: global N x d
        labels = self.group.gather(y) if self.cfg.use_labels else None
        return {"loss": triplet_loss(z1, z2, self.cfg.margin, labels, self.cfg.mining)}
