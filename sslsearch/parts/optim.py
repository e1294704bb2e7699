"""Optimisers (SGD, LARS, AdamW), the batch-size scaling of the learning rate, and its schedule.

The peak rate is ``lr = base_lr × (batch_size / 256) ** p``, ``p`` by the trial's ``lr_scaling``
(:func:`scaled_lr`; ``auto``: the optimiser's rule, :data:`AUTO_LR_SCALING`): **linear** for SGD
and LARS (``base_lr`` per 256 examples, as in the SimCLR/BYOL/VICReg papers), **none** for AdamW
(``base_lr`` is the rate at any batch: measured, docs/lr-scaling.md). It is warmed up linearly,
then decayed by a cosine (as in BenSalem's VICReg study, "Self-Supervised Learning of Visual
Representations"; docs/references.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sslsearch.errors import ConfigError

OPTIMIZERS = ("sgd", "lars", "adamw")


REFERENCE_BATCH = 256
# lr_scaling → the power p of (batch_size / 256): linear (SGD's rule: Goyal et al., 2017), the
# square root (Adam's SDE rule: Malladi et al., 2022), none.
LR_SCALING_POWERS = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}
# What lr_scaling: auto means, per optimiser. AdamW: none, because the rate tuned at one batch
# held at a 4× larger one where the linear rule's 4× rate broke three methods of four (the
# evidence: docs/lr-scaling.md). Adam's update is normalised per coordinate, so a larger batch's
# smaller gradient noise does not call for the larger steps that SGD's rule gives it.
AUTO_LR_SCALING = {"sgd": "linear", "lars": "linear", "adamw": "none"}


def lr_scaling_rule(optimizer: str, lr_scaling: str = "auto") -> str:
    """The rule a trial's rate follows: ``lr_scaling`` itself, or ``auto``'s for ``optimizer``."""
    if lr_scaling != "auto":
        return lr_scaling
    if optimizer not in AUTO_LR_SCALING:
        raise ConfigError(f"optimizer {optimizer!r} is unknown; choose one of: "
                          f"{', '.join(OPTIMIZERS)}")
    return AUTO_LR_SCALING[optimizer]


def scaled_lr(base_lr: float, batch_size: int, optimizer: str, lr_scaling: str = "auto") -> float:
    """The peak rate for ``batch_size``: ``base_lr × (batch_size / 256) ** p``."""
    power = LR_SCALING_POWERS[lr_scaling_rule(optimizer, lr_scaling)]
    return float(base_lr * (batch_size / REFERENCE_BATCH) ** power)


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak_lr: float,
          final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to ``final_lr``."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _exclude_from_decay(name: str, p: Tensor) -> bool:
    # Biases and BatchNorm/LayerNorm scales are 1-D: neither weight decay nor LARS' trust ratio
    # applies to them (as in the official Barlow Twins / VICReg code).
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float,
                 fixed_lr_prefixes: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Weights (decayed, LARS-adapted) and biases/norm parameters (neither); each split again
    into scheduled parameters and those under ``fixed_lr_prefixes`` (``fixed_lr``: the schedule
    leaves them at the peak rate, SimSiam's constant-lr predictor). Empty groups are dropped."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (not _exclude_from_decay(name, p), name.startswith(fixed_lr_prefixes))
            groups.setdefault(key, []).append(p)
    return [{"params": groups[(decay, fixed)], "weight_decay": weight_decay if decay else 0.0,
             "lars_adapt": decay, "fixed_lr": fixed}
            for fixed in (False, True) for decay in (True, False) if (decay, fixed) in groups]


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as in the official Barlow Twins / VICReg implementations.

    For each weight tensor ``w`` with gradient ``g``: ``u = g + wd·w``; trust ratio
    ``q = η‖w‖/‖u‖`` (1 where a norm is 0); ``μ ← momentum·μ + q·u``; ``w ← w − lr·μ``. Groups with
    ``lars_adapt=False`` (biases, norms) skip the trust ratio.
    """

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta,
                    "lars_adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    one = torch.ones_like(w_norm)
                    # torch.where keeps this on the device: no host sync per parameter.
                    q = torch.where(w_norm > 0,
                                    torch.where(u_norm > 0, group["eta"] * w_norm / u_norm, one),
                                    one)
                    update = update.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, model: nn.Module, *, lr: float, weight_decay: float,
                    momentum: float = 0.9, fused: bool = False,
                    fixed_lr_prefixes: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS`; biases and norm parameters are never weight-decayed.

    ``fused`` (CUDA): SGD and AdamW update every parameter in one kernel instead of a few per
    tensor. Parameters named under ``fixed_lr_prefixes`` keep ``lr`` whatever :func:`set_lr` sets.
    """
    groups = param_groups(model, weight_decay, fixed_lr_prefixes)
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if name == "sgd":
        for g in groups:
            g.pop("lars_adapt")
        sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum, **extra)
        if fused and momentum != 0:
            # Fused SGD needs a momentum buffer for every parameter of a step or for none; one that
            # first gets a gradient later (SwAV's prototypes, frozen for the first epoch) would
            # meet a None buffer. Zero buffers give the unfused first step: buf = 0·μ + g = g.
            for g in sgd.param_groups:
                for p in g["params"]:
                    sgd.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return sgd
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        for g in groups:
            g.pop("lars_adapt")
        return torch.optim.AdamW(groups, lr=lr, **extra)
    raise ConfigError(f"optimizer {name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate for every group but the ``fixed_lr`` ones (they keep their peak)."""
    for g in optimizer.param_groups:
        if not g.get("fixed_lr", False):
            g["lr"] = lr
