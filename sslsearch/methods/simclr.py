"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): two views, a 2-layer MLP projector with BN, the NT-Xent loss over 2N views."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import ProjectedMethod, Step, check_temperature
from sslsearch.parts.ops import fp32_loss


@dataclasses.dataclass(frozen=True)
class Config:
    temperature: float = 0.2  # τ; libraries disagree (0.1 VISSL, 0.2 solo-learn, 0.5 lightly)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128

    def check(self) -> None:
        check_temperature(self.temperature)


@fp32_loss
def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    With ``z = [z1; z2]`` (2N rows), ``s_ij = sim(z_i, z_j)`` the cosine similarity and ``j(i)`` the
    other view of sample ``i``::

        ℓ(i) = −log( exp(s_{i,j(i)}/τ) / Σ_{k≠i} exp(s_ik/τ) ),   L = 1/(2N) Σ_i ℓ(i)

    The denominator holds the positive and the 2N−2 negatives; the anchor itself is left out.
    Computed in float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # z: 2N x d
    logits = z @ z.T / temperature  # logits: 2N x 2N
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.arange(2 * n, device=z.device).roll(n)  # i ↔ i + N
    return F.cross_entropy(logits, targets)


class Method(ProjectedMethod):
    """SimCLR. Several workers: the projections of every worker are gathered with their
    gradients, so each anchor's denominator holds the 2N − 2 negatives of the GLOBAL batch, and
    every worker computes the same global loss (:mod:`sslsearch.parts.distributed`, rules 1-2); the
    projector's and the backbone's BatchNorm see the global batch (SimCLR's global BN)."""

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1, z2 = self.project(x1, x2)
        z1, z2 = self.group.gather(z1), self.group.gather(z2)  # z: global N x d
        return {"loss": nt_xent_loss(z1, z2, self.cfg.temperature)}
