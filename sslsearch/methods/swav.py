"""SwAV (Caron et al., 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): two views (no multi-crop), online codes from Sinkhorn-Knopp, swapped prediction.

Each view's L2-normalised projection ``z`` is scored against K L2-normalised prototypes ``C``; the
codes ``q`` of one view (an equal partition of the batch across the prototypes, computed without
gradient) are the targets of the other view's softmax over prototypes. As in the official code
(facebookresearch/swav, ``main_swav.py``): prototypes are renormalised before every forward,
receive no update for the first epoch(s), and an optional per-view queue of past projections
enlarges the set that Sinkhorn partitions when batches are small.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task, check_temperature
from sslsearch.parts import ops
from sslsearch.parts.networks import Backbone, mlp


@dataclasses.dataclass(frozen=True)
class Config:
    temperature: float = 0.1  # τ of the prototype softmax (official 0.1)
    epsilon: float = 0.05  # ε, entropic regularisation of Sinkhorn-Knopp (official 0.05)
    sinkhorn_iterations: int = 3
    num_prototypes: int = 30  # K; official 3000 on ImageNet, ~10× the classes suits small data
    queue_length: int = 0  # per-view queue of past projections for the codes; 0: no queue
    epoch_queue_starts: int = 1  # official 15 (of 800 epochs); the queue is off before this epoch
    freeze_prototypes_epochs: int = 1  # prototypes take no update while epoch < this
    proj_hidden_dim: int = 2048  # official 2048
    proj_output_dim: int = 128  # d, official 128

    def check(self) -> None:
        check_temperature(self.temperature)
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, found {self.epsilon}")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be ≥ 1, found {self.sinkhorn_iterations}")
        if self.num_prototypes < 2:
            raise ValueError(f"num_prototypes must be ≥ 2, found {self.num_prototypes}")
        if self.queue_length < 0:
            raise ValueError(f"queue_length must be ≥ 0 (0: no queue), found {self.queue_length}")
        if self.epoch_queue_starts < 0 or self.freeze_prototypes_epochs < 0:
            raise ValueError("epoch_queue_starts and freeze_prototypes_epochs must be ≥ 0")
        if min(self.proj_hidden_dim, self.proj_output_dim) < 1:
            raise ValueError("proj_hidden_dim and proj_output_dim must be ≥ 1")


@ops.fp32_loss
@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp codes of SwAV for ``scores`` (B × K, ``z·c_k``), detached, in float32
    (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`: the codes are the
    loss's targets, and ``scores/ε`` with ε = 0.05 magnifies bf16's rounding).

    The official algorithm (``distributed_sinkhorn`` of main_swav.py) on one device::

        Q = exp(scores/ε)ᵀ                       # K × B
        Q ← Q / Σ_kb Q_kb                        # total mass 1
        repeat `iterations` times:
            Q ← Q / (K · Σ_b Q_kb)               # each prototype (row) gets mass 1/K
            Q ← Q / (B · Σ_k Q_kb)               # each sample (column) gets mass 1/B
        return (B · Q)ᵀ                          # B × K: each sample's row sums to 1

    so the batch is (approximately, after 3 iterations) equally partitioned: each prototype's
    column of the result sums to ≈ B/K. The same steps are carried out on ``log Q``, with
    logsumexp in place of the sums: the result is identical in exact arithmetic, and neither
    overflows nor underflows to an all-zero row or column (0/0) at small ε, where ``exp`` of
    ``scores/ε`` spans more than float32 holds even after subtracting the maximum.
    """
    b, k = scores.shape
    log_q = scores.detach().T / epsilon  # log_q: K x B
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    for _ in range(iterations):
        log_q = log_q - (torch.logsumexp(log_q, dim=1, keepdim=True) + math.log(k))  # rows: 1/K
        log_q = log_q - (torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(b))  # cols: 1/B
    return torch.exp(log_q + math.log(b)).T  # q: B x K


@ops.fp32_loss
def swav_loss(scores_t: Tensor, scores_s: Tensor, q_t: Tensor, q_s: Tensor,
              temperature: float) -> Tensor:
    """SwAV's swapped prediction: the SUM of the two terms, as the paper's eq. 1 (docs/methods.md)::

        L = ℓ(z_t, q_s) + ℓ(z_s, q_t),   ℓ(z, q) = −1/B Σ_b Σ_k q_bk · log softmax_k(z_b·c_k / τ)

    ``scores_*`` are ``z·c_k`` (B × K, prototypes already applied), ``q_*`` the codes (B × K,
    rows summing to 1) of the same views, treated as constant targets (detached). The official
    code logs and differentiates the MEAN of the two terms (it divides by the number of crop
    pairs), i.e. half this value: the same optimum, gradients twice as large here (immaterial for
    AdamW; for SGD/LARS the same as doubling the learning rate). Computed in float32 (float64
    kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    loss_t = ops.soft_cross_entropy(scores_t / temperature, q_s.detach())  # predict q_s from z_t
    loss_s = ops.soft_cross_entropy(scores_s / temperature, q_t.detach())  # predict q_t from z_s
    return loss_t + loss_s


@ops.fp32
def _prototype_scores(z: Tensor, prototypes: nn.Module) -> Tensor:
    """``z·c_k`` (B × K) in float32 whatever the autocast: the scores are the input of the codes
    and of the loss (divided by ε = 0.05 and τ = 0.1), so the prototype layer follows the losses'
    precision rule."""
    return prototypes(z)  # type: ignore[no-any-return]


class Method(BaseMethod):
    """SwAV: projector ``g`` (2-layer MLP + BN, L2-normalised output), prototypes ``C`` (K × d).

    State (all in ``state_dict``): the prototypes, and when ``queue_length > 0`` a per-view queue
    of past normalised projections (``queue``: 2 × L × d) with its write pointer and a flag set
    once it has been filled; the codes use the queue only once it is full, as the official code,
    which also writes the batch's projections into it during the forward (after its codes are
    computed, so Sinkhorn never counts a sample's current projection twice).

    Several workers: Sinkhorn's equal partition is over the GLOBAL batch (the official
    ``distributed_sinkhorn`` all-reduces its sums), so the projections of every worker are
    gathered with their gradients and every worker computes the same codes and the same global
    loss (:mod:`sslsearch.parts.distributed`); the queue receives the global batch, so it is
    identical on every worker; the projector's BatchNorm sees the global batch.
    """

    queue: Tensor
    queue_ptr: Tensor
    queue_filled: Tensor

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.cfg: Config = cfg
        self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim])
        self.prototypes = nn.Linear(cfg.proj_output_dim, cfg.num_prototypes, bias=False)
        self._normalize_prototypes()
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_output_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def _scores(self, z: Tensor) -> Tensor:
        return _prototype_scores(z, self.prototypes)

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(ops.at_least_fp32(self.projector(self.backbone(x))), dim=1)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        self._normalize_prototypes()
        z1 = self.group.gather(self.embed(x1))  # z: global B x d, unit rows
        z2 = self.group.gather(self.embed(x2))
        s1, s2 = self._scores(z1), self._scores(z2)  # scores: B x K
        use_queue = self.cfg.queue_length > 0 and step.epoch >= self.cfg.epoch_queue_starts
        q1 = self._codes(0, s1, use_queue)
        q2 = self._codes(1, s2, use_queue)
        if use_queue and self.training:
            self._enqueue(z1.detach(), z2.detach())
        return {"loss": swav_loss(s1, s2, q1, q2, self.cfg.temperature)}

    @torch.no_grad()
    def _codes(self, view: int, scores: Tensor, use_queue: bool) -> Tensor:
        cfg = self.cfg
        q = sinkhorn(scores, cfg.epsilon, cfg.sinkhorn_iterations)  # q: B x K
        if not use_queue:
            return q
        queue_scores = self._scores(self.queue[view])  # L x K, with today's prototypes
        q_queue = sinkhorn(torch.cat([queue_scores, scores]), cfg.epsilon,
                           cfg.sinkhorn_iterations)[-scores.shape[0]:]  # batch rows: B x K
        # Both are computed and one is selected on the device: branching on the flag would
        # synchronise with the host every step.
        return torch.where(self.queue_filled, q_queue, q)

    @torch.no_grad()
    def _enqueue(self, z1: Tensor, z2: Tensor) -> None:
        """Write the batch's projections at the pointer: a ring buffer, FIFO, oldest overwritten."""
        length = self.cfg.queue_length
        n = min(z1.shape[0], length)  # a batch larger than the queue keeps its last rows
        idx = (self.queue_ptr + torch.arange(n, device=z1.device)) % length  # idx: n
        self.queue[:, idx] = torch.stack([z1[-n:], z2[-n:]]).to(self.queue.dtype)
        self.queue_filled.logical_or_(self.queue_ptr + n >= length)
        self.queue_ptr.copy_((self.queue_ptr + n) % length)

    def before_optimizer_step(self, step: Step) -> None:
        # The official code drops the prototypes' gradient early on (freeze_prototypes_niters):
        # with grad None every optimiser skips them, weight decay and momentum included.
        if step.epoch < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None
