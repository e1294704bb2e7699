"""Math shared by two or more methods (no method-specific logic here)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (Barlow Twins / VICReg)."""
    n, m = x.shape
    assert n == m, f"off_diagonal needs a square matrix, got {n} x {m}"
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_i −Σ_n targets_in · log softmax(logits_i)_n``: cross-entropy with soft targets.

    With one-hot ``targets`` this is ordinary cross-entropy; i-Mix feeds mixed virtual labels.
    """
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule ``m = 1 − (1 − m_base)·(cos(π·progress) + 1)/2``: m_base → 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``ξ ← m·ξ + (1 − m)·θ`` for parameters; buffers (BN statistics) are copied."""
    t_params: list[torch.Tensor] = list(target.parameters())
    o_params: list[torch.Tensor] = list(online.parameters())
    # One fused kernel for all parameters instead of one per tensor.
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for t_buf, o_buf in zip(target.buffers(), online.buffers(), strict=True):
        t_buf.copy_(o_buf)


def copy_frozen(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that takes no gradient (an EMA target's starting point)."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
