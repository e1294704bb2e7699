"""Math shared by two or more methods (no method-specific logic here)."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor, nn

P = ParamSpec("P")
R = TypeVar("R")

# Every function decorated with fp32_loss, by "module.qualname" (tests/methods/test_precision.py
# checks each one under autocast and that every method module registers at least one).
_FP32_LOSSES: dict[str, Callable[..., Any]] = {}


def _upcast(x: object) -> object:
    """``x`` in float32 if it is a floating-point tensor of lower precision, else ``x`` itself."""
    if isinstance(x, Tensor) and x.is_floating_point() and torch.finfo(x.dtype).bits < 32:
        return x.float()
    return x


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is of lower precision (bf16, fp16); float32 and float64 as they
    are (``.float()`` would round a float64 test down to float32)."""
    return x.float() if torch.finfo(x.dtype).bits < 32 else x


def fp32(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` in float32 whatever the caller's autocast: the precision rule of every loss.

    Inside ``fn`` autocast is off for the device type of each tensor argument (CPU when there is
    none), and every floating-point tensor argument of lower precision than float32 (bf16, fp16)
    is upcast to float32; float32 and float64 arguments are passed as they are, so float64 tests
    stay exact. Only top-level arguments are converted (tensors inside lists are not). Each call
    upcasts its own copy: a bf16 tensor fed to two decorated losses gets its two gradients added
    in bf16, so a caller that sums several losses of one tensor upcasts it once itself (N-pair).

    Why: under bf16 autocast a matmul of float32 inputs still runs in bf16 (``.float()`` on the
    inputs does not stop it), and bf16 keeps ~3 significant digits. Cosine logits divided by a
    small τ (contrastive losses, SwAV's scores and Sinkhorn's ε), squared covariances summed over
    d² entries (VICReg, Barlow Twins), √Var, and exp(log σ²) ratios (DARe's KL) are then off by
    far more than the gradient signal. Losses cost little next to the backbone, so they always run
    in float32; the weights' matmuls elsewhere keep bf16's speed.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        devices = dict.fromkeys(x.device.type for x in (*args, *kwargs.values())
                                if isinstance(x, Tensor)) or {"cpu": None}
        with contextlib.ExitStack() as stack:
            for device in devices:
                if torch.amp.is_autocast_available(device):  # not "meta" (the bench's FLOP count)
                    stack.enter_context(torch.autocast(device, enabled=False))
            call: Callable[..., R] = fn  # the upcast arguments no longer match P for mypy
            return call(*(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()})

    return wrapper


def fp32_loss(fn: Callable[P, R]) -> Callable[P, R]:
    """:func:`fp32` for a loss (or a loss's input, such as SwAV's Sinkhorn codes), registered in
    :func:`fp32_losses` so that a test can check every one under autocast."""
    wrapped = fp32(fn)
    _FP32_LOSSES[f"{fn.__module__}.{fn.__qualname__}"] = wrapped
    return wrapped


def fp32_losses() -> dict[str, Callable[..., Any]]:
    """The functions decorated with :func:`fp32_loss` in the modules imported so far, by
    ``"module.qualname"``."""
    return dict(_FP32_LOSSES)


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (Barlow Twins / VICReg)."""
    n, m = x.shape
    assert n == m, f"off_diagonal needs a square matrix, got {n} x {m}"
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


@fp32_loss
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
