"""SupCon (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan, 2020,
"Supervised Contrastive Learning"): NT-Xent over 2N views where every other view of the same class
is a positive. The loss uses the class labels: the method is supervised.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import ProjectedMethod, Step, check_temperature
from sslsearch.parts.ops import fp32_loss


@dataclasses.dataclass(frozen=True)
class Config:
    # Not a field (nothing to set): says that this method's loss reads the class labels.
    supervised: ClassVar[bool] = True

    temperature: float = 0.1  # τ; the paper's best on ImageNet (the official code defaults to 0.07)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128

    def check(self) -> None:
        check_temperature(self.temperature)


@fp32_loss
def supcon_loss(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """The supervised contrastive loss ``L_out`` (the paper's eq. 2).

    With ``z = [z1; z2]`` (2N rows, L2-normalised), ``s_ik = sim(z_i, z_k)``, and ``P(i)`` every
    other view with the label of ``i`` (its own other view included, so ``|P(i)| ≥ 1``)::

        ℓ(i) = −1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) ),   L = 1/(2N) Σ_i ℓ(i)

    With all labels distinct ``P(i)`` is the other view alone and this is SimCLR's NT-Xent. The
    official code also multiplies by ``τ/τ_base`` (τ_base = 0.07); not here. Computed in float32
    (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # z: 2N x d
    logits = z @ z.T / temperature  # logits: 2N x 2N
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # log_prob: 2N x 2N
    views_labels = labels.repeat(2)  # views_labels: 2N
    positives = (views_labels[:, None] == views_labels[None, :]) & ~self_mask  # 2N x 2N
    # masked_fill (not a product) so the −inf on the diagonal never meets a 0.
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)  # pos_log_prob: 2N
    return -(pos_log_prob / positives.sum(dim=1)).mean()


class Method(ProjectedMethod):
    """SupCon: SimCLR's projector, the supervised contrastive loss on the batch labels ``y``.

    Several workers: the projections (with their gradients) and the labels of every worker are
    gathered, so the positives and negatives of each anchor are those of the GLOBAL batch, and
    every worker computes the same global loss (:mod:`sslsearch.parts.distributed`); BatchNorm sees
    the global batch.
    """

    supervised: ClassVar[bool] = True

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1, z2 = self.project(x1, x2)
        z1, z2, y = self.group.gather(z1), self.group.gather(z2), self.group.gather(y)
        return {"loss": supcon_loss(z1, z2, y, self.cfg.temperature)}
