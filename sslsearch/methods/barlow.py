"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, 2021, "Barlow Twins: Self-Supervised Learning
via Redundancy Reduction"): the cross-correlation of the two views' batch-standardised embeddings is
driven to the identity matrix.

Unlike the official code (an early version of its ``main.py`` multiplied the loss by a
``--scale-loss`` factor, about 1/32, to avoid per-group learning rates), the loss is NOT rescaled:
it is exactly the paper's eq. (1), so ``base_lr`` absorbs any overall scale.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss, off_diagonal

# BatchNorm1d's default ε: the official code standardises with ``nn.BatchNorm1d(affine=False)``.
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Config:
    lambda_offdiag: float = 0.0051  # λ, the redundancy-reduction weight (paper: 5e-3, code: 0.0051)
    projector_dims: tuple[int, ...] = (2048, 2048, 2048)  # paper: 8192-8192-8192 on ImageNet

    def check(self) -> None:
        if self.lambda_offdiag < 0:
            raise ValueError(f"lambda_offdiag must be ≥ 0, found {self.lambda_offdiag}")
        if not self.projector_dims or min(self.projector_dims) < 1:
            raise ValueError(
                f"projector_dims must list positive widths, found {self.projector_dims}")


@fp32_loss
def barlow_twins_terms(z1: Tensor, z2: Tensor, lambda_offdiag: float,
                       eps: float = BN_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Barlow Twins' loss and its two terms, for embeddings ``z1``, ``z2`` of shape N × d.

    Each dimension is standardised over the batch, ``ẑ_·j = (z_·j − mean_j) / √(Var_j + ε)`` with
    the biased variance and ε = 1e-5 (BatchNorm without affine, as the official code), and
    ``C = ẑ1ᵀ ẑ2 / N``::

        on_diag  = Σ_i (1 − C_ii)²
        off_diag = Σ_{i≠j} C_ij²
        L = on_diag + λ · off_diag

    Returns ``(loss, on_diag, off_diag)`` (the unweighted terms). Computed in float32 (float64
    kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n = z1.shape[0]
    z1 = (z1 - z1.mean(dim=0)) / torch.sqrt(z1.var(dim=0, unbiased=False) + eps)  # z1: N x d
    z2 = (z2 - z2.mean(dim=0)) / torch.sqrt(z2.var(dim=0, unbiased=False) + eps)  # z2: N x d
    c = z1.T @ z2 / n  # c: d x d
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag, on_diag, off_diag


@fp32_loss
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float) -> Tensor:
    """``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²``: the scalar of :func:`barlow_twins_terms`."""
    return barlow_twins_terms(z1, z2, lambda_offdiag)[0]


class Method(BaseMethod):
    """Barlow Twins: a wide 3-layer projector, the cross-correlation loss; no labels, no state.

    Several workers: the standardisation and the cross-correlation C need the statistics of the
    GLOBAL batch, so the embeddings of every worker are gathered with their gradients and every
    worker computes the same global loss (:mod:`sslsearch.parts.distributed`); the projector's
    BatchNorm sees the global batch (the official code's SyncBatchNorm).
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        # Linear-BN-ReLU blocks, the last layer plain Linear (official code); the standardisation
        # the official code does with a parameter-free BN lives in the loss.
        self.projector = mlp([backbone.out_dim, *cfg.projector_dims])

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        z1, z2 = self.group.gather(z1), self.group.gather(z2)  # z: global N x d
        loss, on_diag, off_diag = barlow_twins_terms(z1, z2, self.cfg.lambda_offdiag)
        return {"loss": loss, "on_diag": on_diag, "off_diag": off_diag}
