"""i-Mix (Lee, Zhu, Sohn, Li, Shin & Lee, 2021, "i-Mix: A Domain-Agnostic Strategy for Contrastive
Representation Learning", ICLR 2021): mixup on the inputs *and* on the virtual labels of a
contrastive method, a regulariser that needs no domain knowledge (with tabular rows, where the two
views are identical, mixing is the only augmentation).

Each sample of a batch gets a virtual label: its index in the batch (a one-hot row of ``I``). One
view is mixed, ``x̂_i = λ·x_i + (1−λ)·x_π(i)`` with ``λ ~ Beta(α, α)`` and ``π`` a random
permutation, and its virtual label with it, ``λ·I + (1−λ)·P_π`` (``P_π`` the permutation matrix,
``(P_π)_{i,π(i)} = 1``). The wrapped method's loss is then taken against the unmixed other view:

- N-pair: ``ℓ_N-pair(x̂_i, λv_i + (1−λ)v_π(i))``;
- MoCo v2: the same soft targets over the N keys of the batch, the queue as extra negatives
  (the paper's ``ℓ_MoCo(x_i, ṽ_i; B, M)``);
- BYOL: ``λ·ℓ_BYOL(x̂_i, target_i) + (1−λ)·ℓ_BYOL(x̂_i, target_π(i))``.

As in the paper's Algorithm 1 one λ is drawn per batch (the authors' code draws one per sample and
takes ``max(λ, 1−λ)``; with a random π both give the same mixtures in distribution). One direction
(view 1 mixed and queried, as the official code's default); ``symmetric: true`` adds the other.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task, check_temperature
from sslsearch.methods.byol import byol_loss
from sslsearch.methods.moco import enqueue
from sslsearch.methods.npair import npair_loss
from sslsearch.parts import ops
from sslsearch.parts.networks import Backbone, mlp

BASES = ("npair", "moco", "byol")


@dataclasses.dataclass(frozen=True)
class Config:
    base: str = "npair"  # the wrapped method: npair, moco or byol
    alpha: float = 1.0  # λ ~ Beta(α, α); i-Mix: 1 (CIFAR), 2 (CovType), 0.2 (ImageNet)
    temperature: float = 0.2  # τ (npair, moco); i-Mix: 0.2 (CIFAR), 0.1 (CovType)
    momentum: float = 0.99  # moco: constant EMA momentum m (paper 0.999, long runs)
    m_base: float = 0.99  # byol: EMA momentum, ramped from m_base to 1 by cosine
    queue_size: int = 4096  # moco: K; keep it below the training-set size
    proj_hidden_dim: int = 2048  # i-Mix: 2048 (ResNet-50's feature width)
    proj_output_dim: int = 128
    pred_hidden_dim: int = 1024  # byol's predictor (paper: 4096)
    symmetric: bool = False  # also mix view 2 and query it against view 1 (½ each)

    def check(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, found {self.base!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, found {self.alpha}")
        check_temperature(self.temperature)
        for name in ("momentum", "m_base"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], found {getattr(self, name)}")
        for name in ("queue_size", "proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, found {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------
# Mixing


_GAMMA_TRIES = 16  # Marsaglia–Tsang accepts ≥ 95 % of proposals here: all 16 fail with p < 1e-20


def _log_gamma(a: float, n: int, generator: torch.Generator | None, device: torch.device
               ) -> Tensor:
    """``log`` of ``n`` independent Gamma(a, 1) draws, from ``generator`` (None: the global RNG).

    ``torch.distributions`` cannot take a generator, so this is Marsaglia & Tsang's (2000) method,
    vectorised: ``_GAMMA_TRIES`` proposals in parallel, the first accepted one kept (no data-
    dependent loop, no host sync). It samples Gamma(a + 1) (shape ≥ 1, high acceptance) and uses
    ``Gamma(a) = Gamma(a + 1)·U^(1/a)``, in log space so that small ``a`` cannot underflow.
    """
    d = a + 1.0 - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    tiny = torch.finfo(torch.float32).tiny
    z = torch.randn(n, _GAMMA_TRIES, generator=generator, device=device)  # z: n x T
    u = torch.rand(n, _GAMMA_TRIES, generator=generator, device=device)  # u: n x T
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(tiny))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.float().argmax(dim=1, keepdim=True)  # the first accepted proposal: n x 1
    log_g = math.log(d) + log_v.gather(1, first).squeeze(1)  # log Gamma(a + 1): n
    u_boost = torch.rand(n, generator=generator, device=device).clamp_min(tiny)
    return log_g + torch.log(u_boost) / a


def sample_lambda(alpha: float, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """One ``λ ~ Beta(α, α)`` as a 0-dim float32 tensor: ``G₁/(G₁ + G₂)`` for ``G ~ Gamma(α)``."""
    log_g = _log_gamma(alpha, 2, generator, torch.device(device))
    return torch.sigmoid(log_g[0] - log_g[1])


def mix(x: Tensor, alpha: float, generator: torch.Generator | None = None
        ) -> tuple[Tensor, Tensor, Tensor]:
    """Mixup of a batch with a permutation of itself: ``(x̂, π, λ)``.

    ``x̂_i = λ·x_i + (1 − λ)·x_π(i)``, ``λ ~ Beta(α, α)`` (one per batch, a 0-dim float32 tensor on
    ``x``'s device), ``π`` a uniformly random permutation (a long tensor). ``generator`` must live
    on ``x``'s device; None draws from the global RNG (what training does: checkpointed).
    """
    lam = sample_lambda(alpha, generator, x.device)
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)  # π: N
    lam_x = lam.to(x.dtype)
    return lam_x * x + (1 - lam_x) * x[perm], perm, lam


def mixed_targets(perm: Tensor, lam: Tensor | float) -> Tensor:
    """Mixed virtual labels ``λ·I + (1 − λ)·P_π`` (N × N float32), ``(P_π)_{i,π(i)} = 1``."""
    eye = torch.eye(perm.shape[0], device=perm.device)  # I: N x N
    # Row i of P_π is e_π(i). (Indexing, not F.one_hot, whose range check may sync on GPUs.)
    return lam * eye + (1 - lam) * eye[perm]


# ------------------------------------------------------------------------------------------------
# The wrapped losses


@ops.fp32_loss
def imix_moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float, targets: Tensor
                   ) -> Tensor:
    """MoCo's loss with soft virtual labels over the batch's keys (i-Mix's ``ℓ_MoCo(x_i, ṽ_i;
    B, M)``): queries ``f_i = q_i``, the N batch keys ``f̃_n = k_n`` (EMA encoder), the queue
    ``μ`` (K × d, unit rows) as extra negatives::

        ℓ(i) = −Σ_{n=1..N} ṽ_in · log( exp(s(f_i, f̃_n)/τ) / Z_i ),
        Z_i  = Σ_{k=1..N} exp(s(f_i, f̃_k)/τ) + Σ_{k=1..K} exp(s(f_i, μ_k)/τ)

    ``targets`` (N × N) are the virtual labels ``ṽ`` (the identity without mixing: each query's
    positive is its own key, the other N − 1 keys are negatives too). ``q``, ``k`` are
    L2-normalised here; ``k`` and the queue take no gradient. With an empty queue this is
    ``npair_loss(q, k, τ, targets)``. Computed in float32 (float64 kept) with autocast off.
    """
    q = F.normalize(q, dim=1)  # q: N x d
    k = F.normalize(k.detach(), dim=1)  # k: N x d
    contrast = torch.cat([k, queue.detach().to(q.dtype)])  # contrast: (N+K) x d
    logits = q @ contrast.T / temperature  # logits: N x (N+K)
    soft = F.pad(targets.to(logits.dtype), (0, queue.shape[0]))  # no mass on the queue: N x (N+K)
    return ops.soft_cross_entropy(logits, soft)


@ops.fp32_loss
def imix_byol_loss(p: Tensor, z_target: Tensor, perm: Tensor, lam: Tensor | float) -> Tensor:
    """BYOL under i-Mix: ``λ·ℓ_BYOL(p, z̃) + (1 − λ)·ℓ_BYOL(p, z̃[π])``.

    ``p`` (N × d): online predictions of the mixed view; ``z_target`` (N × d): target projections
    of the unmixed other view; ``ℓ_BYOL = 1/N Σ_i (2 − 2·sim(p_i, z̃_i))`` (``byol_loss``).
    Computed in float32 (float64 kept) with autocast off.
    """
    return lam * byol_loss(p, z_target) + (1 - lam) * byol_loss(p, z_target[perm])


# ------------------------------------------------------------------------------------------------


class Method(BaseMethod):
    """i-Mix around N-pair, MoCo v2 or BYOL (``base``), with that method's heads and state.

    - npair: projector ``g`` (SimCLR's: 2-layer MLP + BN), both branches online;
    - moco: ``g`` as above (i-Mix's CIFAR head, BN in the middle), an EMA key encoder with constant
      momentum, a K × d queue that the step's keys join after the optimiser step;
    - byol: ``g`` and predictor ``h``, an EMA target (momentum ramped from ``m_base`` to 1).

    The mix (λ, π) is drawn from the global RNG, which the training loop seeds and checkpoints.

    Several workers: the mix is over the GLOBAL batch: every worker gathers the (unmixed) query
    view, draws the same λ and the same permutation π of the global batch (so x_π(i) may come
    from another worker) and keeps its own rows of the mixed view; the queries and keys of every
    worker are gathered (queries with their gradients), so the virtual labels, the N-pair
    negatives and BYOL's permuted targets are the global batch's, and every worker computes the
    same global loss (:mod:`sslsearch.parts.distributed`). MoCo's queue receives every worker's
    keys; the EMA encoders are identical on every worker; BatchNorm sees the global batch.
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        if cfg.base == "byol":
            self.predictor = mlp([cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim])
        if cfg.base in ("moco", "byol"):
            self.target_backbone = ops.copy_frozen(backbone)
            self.target_projector = ops.copy_frozen(self.projector)
        if cfg.base == "moco":
            self.register_buffer("queue", F.normalize(
                torch.randn(cfg.queue_size, cfg.proj_output_dim), dim=1))  # queue: K x d
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: Tensor | None = None  # moco: this step's keys, until after_step

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        directions = [(x1, x2), (x2, x1)] if self.cfg.symmetric else [(x1, x2)]
        losses, keys = [], []
        for x_query, x_other in directions:
            # Mixed over the global batch (one process: the batch itself); this worker's rows.
            x_mix, perm, lam = mix(self.group.gather(x_query), self.cfg.alpha)
            loss, k = self.mixed_loss(self.group.shard(x_mix), x_other, perm, lam)
            losses.append(loss)
            if k is not None:
                keys.append(k)
        if keys:
            self._pending_keys = torch.cat(keys)
        return {"loss": torch.stack(losses).mean()}

    def mixed_loss(self, x_mix: Tensor, x_other: Tensor, perm: Tensor, lam: Tensor
                   ) -> tuple[Tensor, Tensor | None]:
        """The wrapped method's loss for the mixed view ``x_mix`` = mix(·, π, λ) against the
        unmixed ``x_other``; also the unit keys to enqueue (moco) or None."""
        tau = self.cfg.temperature
        q = self.projector(self.backbone(x_mix))
        if self.cfg.base == "npair":
            k = self.projector(self.backbone(x_other))
        else:
            with torch.no_grad():
                k = self.target_projector(self.target_backbone(x_other))
        if self.cfg.base == "byol":
            q = self.predictor(q)
        q, k = self.group.gather(q), self.group.gather(k)  # global N x d (q with its gradient)
        # The losses compute in float32 whatever the autocast (ops.fp32_loss); λ is float32.
        if self.cfg.base == "npair":
            return npair_loss(q, k, tau, mixed_targets(perm, lam)), None
        if self.cfg.base == "moco":
            loss = imix_moco_loss(q, k, self.queue, tau, mixed_targets(perm, lam))
            return loss, F.normalize(ops.at_least_fp32(k), dim=1)  # keys for the queue
        return imix_byol_loss(q, k, perm, lam), None

    def after_step(self, step: Step) -> None:
        if self.cfg.base == "npair":
            return
        # moco: constant momentum (MoCo); byol: cosine ramp to 1 (BYOL). A Python float: no sync.
        m = (self.cfg.momentum if self.cfg.base == "moco"
             else ops.cosine_momentum(self.cfg.m_base, step.progress))
        ops.ema_update(self.target_backbone, self.backbone, m)
        ops.ema_update(self.target_projector, self.projector, m)
        if self._pending_keys is not None:
            enqueue(self.queue, self.queue_ptr, self._pending_keys)
            self._pending_keys = None
