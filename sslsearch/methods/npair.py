"""N-pair loss (Sohn, 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective") as i-Mix (Lee et al., 2021, "i-Mix: A Domain-Agnostic Strategy for Contrastive
Representation Learning", ICLR 2021) uses it: each anchor of view 1 is classified among the N
embeddings of view 2, its "virtual label" being its own index in the batch.

Unlike SimCLR's NT-Xent (2N − 2 negatives, drawn from both views), an anchor here only sees the
N − 1 other samples of the *other* view. The loss takes soft virtual labels so that i-Mix can feed
mixed ones (``sslsearch.methods.imix``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import ProjectedMethod, Step, check_temperature
from sslsearch.parts import ops
from sslsearch.parts.ops import fp32_loss, soft_cross_entropy


@dataclasses.dataclass(frozen=True)
class Config:
    temperature: float = 0.2  # τ; i-Mix: 0.2 (CIFAR), 0.5 (Speech Commands), 0.1 (CovType)
    proj_hidden_dim: int = 2048  # i-Mix: 2048 (ResNet-50's feature width)
    proj_output_dim: int = 128

    def check(self) -> None:
        check_temperature(self.temperature)
        if self.proj_hidden_dim < 1 or self.proj_output_dim < 1:
            raise ValueError("proj_hidden_dim and proj_output_dim must be ≥ 1")


@fp32_loss
def npair_loss(z1: Tensor, z2: Tensor, temperature: float, targets: Tensor | None = None
               ) -> Tensor:
    """The N-pair loss with (soft) virtual labels, i-Mix's eq. for ``ℓ_N-pair``.

    With ``f_i = z1_i`` (anchor, view 1), ``f̃_n = z2_n`` (view 2), ``s`` the cosine similarity and
    ``v_i`` the virtual label of anchor ``i`` (a row of ``targets``, summing to 1)::

        ℓ(i) = −Σ_n v_in · log( exp(s(f_i, f̃_n)/τ) / Σ_k exp(s(f_i, f̃_k)/τ) ),   L = 1/N Σ_i ℓ(i)

    ``targets`` (N × N) defaults to the identity: ``v_i`` is one-hot on ``i``, its index in the
    batch. One direction only (view 1 anchors against view 2); the method symmetrises. Computed
    in float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    n = z1.shape[0]
    f = F.normalize(z1, dim=1)  # f: N x d
    f_tilde = F.normalize(z2, dim=1)  # f̃: N x d
    logits = f @ f_tilde.T / temperature  # logits: N x N
    if targets is None:
        targets = torch.eye(n, dtype=logits.dtype, device=logits.device)  # targets: N x N
    return soft_cross_entropy(logits, targets.to(logits.dtype))


class Method(ProjectedMethod):
    """N-pair: ``½ ℓ(z₁ → z₂) + ½ ℓ(z₂ → z₁)`` with SimCLR's projector (2-layer MLP + BN).

    The symmetrisation is ours (the paper writes one direction; i-Mix's code has it as an option):
    every view then serves once as anchor, as in SimCLR, at no extra forward pass.

    Several workers: both views' projections are gathered with their gradients, so every anchor
    is classified among the N embeddings of the GLOBAL batch, and every worker computes the same
    global loss (:mod:`sslsearch.parts.distributed`); BatchNorm sees the global batch.
    """

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        z1, z2 = self.project(x1, x2)
        # Upcast once (the losses would each upcast their own copy): the two directions'
        # gradients then add up in float32 before the one cast back to bf16.
        z1, z2 = ops.at_least_fp32(z1), ops.at_least_fp32(z2)
        z1, z2 = self.group.gather(z1), self.group.gather(z2)  # z: global N x d
        loss = 0.5 * (npair_loss(z1, z2, self.cfg.temperature)
                      + npair_loss(z2, z1, self.cfg.temperature))
        return {"loss": loss}
