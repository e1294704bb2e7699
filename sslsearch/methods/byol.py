"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning"): an online network (encoder ``f``, projector ``g``, predictor ``h``) predicts the
projection of the other view made by an EMA target network (``f``, ``g`` only); no negatives."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts import ops
from sslsearch.parts.networks import Backbone, mlp


@dataclasses.dataclass(frozen=True)
class Config:
    m_base: float = 0.99  # τ_base, ramped to 1 by cosine; paper: 0.996 (ImageNet), 0.99 (CIFAR)
    proj_hidden_dim: int = 1024  # paper: 4096
    proj_output_dim: int = 256  # paper: 256
    pred_hidden_dim: int = 1024  # paper: 4096

    def check(self) -> None:
        if not 0 <= self.m_base <= 1:
            raise ValueError(f"m_base must be in [0, 1], found {self.m_base}")
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, found {getattr(self, name)}")


@ops.fp32_loss
def byol_loss(p: Tensor, z_target: Tensor) -> Tensor:
    """BYOL's regression loss in ONE direction: the online prediction ``p`` of one view against
    the target projection ``z̃`` of the other view::

        ℓ = 1/N Σ_i ‖p̄_i − z̄̃_i‖² = 1/N Σ_i (2 − 2·sim(p_i, z̃_i)),   x̄ = x / ‖x‖

    The method symmetrises it: ``L = ℓ(h(z₁), z̃₂) + ℓ(h(z₂), z̃₁)`` (each term in [0, 4]). The
    gradient is not stopped here: the caller passes a ``z_target`` made without gradient (the EMA
    target under ``torch.no_grad``). Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`): half-precision inputs are upcast.
    """
    p = F.normalize(p, dim=1)  # p: N x d
    z = F.normalize(z_target, dim=1)  # z: N x d
    return (2 - 2 * (p * z).sum(dim=1)).mean()


class Method(BaseMethod):
    """BYOL: online ``h(g(f(x)))`` regresses the EMA target's ``g̃(f̃(x′))``.

    ``embed`` (the collapse monitor) is the online projector output ``g(f(x))``, the base default.

    Several workers: the loss is a mean of per-sample terms, so each worker takes it over its own
    rows (plain data parallel: the mean over workers is the global batch's mean, the shards being
    equal); BatchNorm, online and target, sees the global batch (BYOL's cross-replica BN). The
    EMA target is identical on every worker: the same start, the same averaged gradients, the
    same update.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        self.predictor = mlp([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        # The target ξ starts equal to the online θ (paper, §3.1) and is only ever moved by EMA.
        self.target_backbone = ops.copy_frozen(backbone)
        self.target_projector = ops.copy_frozen(self.projector)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        p1 = self.predictor(self.projector(self.backbone(x1)))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss}

    def after_step(self, step: Step) -> None:
        # The schedule is a function of the step count: a Python float, no host sync.
        m = ops.cosine_momentum(self.cfg.m_base, step.progress)
        ops.ema_update(self.target_backbone, self.backbone, m)
        ops.ema_update(self.target_projector, self.projector, m)
