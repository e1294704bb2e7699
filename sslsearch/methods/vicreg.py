"""VICReg (Bardes, Ponce & LeCun, 2022, "Variance-Invariance-Covariance Regularization for
Self-Supervised Learning"), as the official implementation computes it (see docs/methods.md)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss, off_diagonal


@dataclasses.dataclass(frozen=True)
class Config:
    sim_coeff: float = 25.0  # λ, invariance
    std_coeff: float = 25.0  # μ, variance
    cov_coeff: float = 1.0  # ν, covariance
    expander_dims: tuple[int, ...] = (2048, 2048, 2048)  # paper: 8192-8192-8192 on ImageNet

    def check(self) -> None:
        if min(self.sim_coeff, self.std_coeff, self.cov_coeff) < 0:
            raise ValueError("sim_coeff, std_coeff and cov_coeff must be ≥ 0")
        if not self.expander_dims:
            raise ValueError("expander_dims must list at least one width")


@fp32_loss
def vicreg_loss(z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """VICReg: ``L = λ·s(Z, Z′) + μ·½[v(Z) + v(Z′)] + ν·[c(Z) + c(Z′)]``, for Z, Z′ of shape N × d.

    - invariance ``s = 1/(N·d) Σ_i ‖z_i − z′_i‖²`` (mean squared error over all entries);
    - variance ``v(Z) = 1/d Σ_j max(0, γ − √(Var(z_·j) + ε))`` with γ = 1, ε = 1e-4, unbiased Var;
    - covariance ``c(Z) = 1/d Σ_{i≠j} Cov(Z)_ij²`` with ``Cov(Z) = (Z − Z̄)ᵀ(Z − Z̄)/(N − 1)``.

    Returns ``(loss, repr_loss, std_loss, cov_loss)`` (the unweighted terms, as the official code
    names them). Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n, d = z1.shape
    repr_loss = F.mse_loss(z1, z2)
    z1 = z1 - z1.mean(dim=0)
    z2 = z2 - z2.mean(dim=0)
    std_z1 = torch.sqrt(z1.var(dim=0) + 1e-4)
    std_z2 = torch.sqrt(z2.var(dim=0) + 1e-4)
    std_loss = F.relu(1 - std_z1).mean() / 2 + F.relu(1 - std_z2).mean() / 2
    cov_z1 = (z1.T @ z1) / (n - 1)  # cov: d x d
    cov_z2 = (z2.T @ z2) / (n - 1)
    cov_loss = off_diagonal(cov_z1).pow(2).sum() / d + off_diagonal(cov_z2).pow(2).sum() / d
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


class Method(BaseMethod):
    """VICReg. Several workers: the variance and covariance terms need the statistics of the
    GLOBAL batch, so the embeddings of every worker are gathered with their gradients and every
    worker computes the same global loss (:mod:`sslsearch.parts.distributed`; the official code
    gathers too); the expander's BatchNorm sees the global batch (its SyncBatchNorm)."""

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        # The expander: Linear-BN-ReLU blocks, the last layer plain Linear (official code).
        self.projector = mlp([backbone.out_dim, *cfg.expander_dims])

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        z1, z2 = self.group.gather(z1), self.group.gather(z2)  # z: global N x d
        loss, repr_loss, std_loss, cov_loss = vicreg_loss(
            z1, z2, self.cfg.sim_coeff, self.cfg.std_coeff, self.cfg.cov_coeff)
        return {"loss": loss, "repr_loss": repr_loss, "std_loss": std_loss, "cov_loss": cov_loss}
