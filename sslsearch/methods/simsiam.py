"""SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning"): a Siamese
encoder + 3-layer projector, a bottleneck predictor, and a stop-gradient on the projection that is
predicted; no negatives, no momentum encoder."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss


@dataclasses.dataclass(frozen=True)
class Config:
    # Paper: 2048 (= ResNet-50's feature width) with a 512 bottleneck (proj_dim / 4). 128 / 32 match
    # the small networks this project runs on the CPU: on the Fashion-MNIST learning protocol of
    # tests/methods/test_learning.py (width-8 CNN with its 7×7 grid, 4 epochs) 128 / 32 gained
    # +1.9 / +1.4 kNN points over random init (seeds 0 / 1), the paper's 2048 / 512 +1.4 / −0.1.
    # The search space offers both.
    proj_dim: int = 128
    pred_hidden_dim: int = 32  # the predictor's bottleneck
    # False removes the stop-gradient: the paper's Fig. 2 ablation, which collapses (the loss goes
    # to its minimum −1 within an epoch and every output becomes the same constant vector). It is
    # kept as a known-collapsing configuration for collapse-detection tests, not for use.
    stop_gradient: bool = True
    # The official code's --fix-pred-lr (the paper's predictor ablation, Table 1): h at a
    # constant lr, without the cosine decay, does better, since h keeps adapting to the latest z.
    fix_pred_lr: bool = False

    def check(self) -> None:
        for name in ("proj_dim", "pred_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, found {getattr(self, name)}")


def _neg_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``D(p, z) = −1/N Σ_i sim(p_i, z_i)``."""
    p = F.normalize(p, dim=1)  # p: N x d
    z = F.normalize(z, dim=1)  # z: N x d
    return -(p * z).sum(dim=1).mean()


@fp32_loss
def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor,
                 stop_gradient: bool = True) -> Tensor:
    """SimSiam's symmetrised loss, with ``p = h(z)`` the predictions and ``z = g(f(x))``::

        L = ½·D(p₁, sg(z₂)) + ½·D(p₂, sg(z₁)),   D(p, z) = −1/N Σ_i sim(p_i, z_i)

    ``sg`` (stop-gradient) is applied here: ``z₁``, ``z₂`` are detached, so the encoder receives
    gradient only through the predictions. ``L`` lies in [−1, 1]. ``stop_gradient=False`` drops
    ``sg`` (the paper's collapsing ablation). Computed in float32 (float64 kept) with autocast
    off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    return 0.5 * _neg_cosine(p1, z2) + 0.5 * _neg_cosine(p2, z1)


class Method(BaseMethod):
    """SimSiam: ``p = h(g(f(x)))`` predicts the other view's ``sg(g(f(x′)))``.

    ``embed`` (the collapse monitor) is the projector output ``z = g(f(x))``, the base default.

    Several workers: the loss is a mean of per-sample terms, so each worker takes it over its own
    rows (plain data parallel); the projector's and predictor's BatchNorm see the global batch,
    as SimSiam's synchronised BN.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        # Official code: Linear-BN-ReLU ×2, then Linear + BN without affine parameters.
        self.projector = mlp([backbone.out_dim, cfg.proj_dim, cfg.proj_dim, cfg.proj_dim],
                             last_batch_norm=True, last_affine=False)
        # The bottleneck predictor: Linear-BN-ReLU, then a plain Linear (no BN on the output).
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim])

    def fixed_lr_prefixes(self) -> tuple[str, ...]:
        return ("predictor.",) if self.cfg.fix_pred_lr else ()

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return {"loss": simsiam_loss(p1, p2, z1, z2, self.cfg.stop_gradient)}
