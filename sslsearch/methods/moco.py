"""MoCo (He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning") and
MoCo v2 (Chen, Fan, Girshick & He, 2020, "Improved Baselines with Momentum Contrastive Learning"):
a query encoder is trained to pick its key, made by a momentum (EMA) copy of itself, out of a FIFO
queue of K keys from earlier batches.

v2 is the default (2-layer MLP head, τ = 0.2); v1 is the configuration ``mlp_head: false,
temperature: 0.07`` (a single linear layer to ``dim``, as v1's encoder ends in its ``fc``).
Single device: the paper's shuffling BN across GPUs (against the batch statistics leaking which
key is the positive) is not reproduced.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task, check_temperature
from sslsearch.parts import ops
from sslsearch.parts.networks import Backbone, mlp


@dataclasses.dataclass(frozen=True)
class Config:
    temperature: float = 0.2  # τ; v2: 0.2, v1: 0.07
    momentum: float = 0.99  # m, constant (no ramp); paper: 0.999 over 200+ ImageNet epochs
    queue_size: int = 4096  # K; paper: 65536 (ImageNet). Keep K below the training-set size
    mlp_head: bool = True  # True: v2's Linear-ReLU-Linear head; False: v1's single Linear
    proj_hidden_dim: int = 2048  # v2: 2048 (ResNet-50's feature width)
    proj_output_dim: int = 128  # dim

    def check(self) -> None:
        check_temperature(self.temperature)
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], found {self.momentum}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be ≥ 1, found {self.queue_size}")
        if self.proj_hidden_dim < 1 or self.proj_output_dim < 1:
            raise ValueError("proj_hidden_dim and proj_output_dim must be ≥ 1")


@ops.fp32_loss
def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (eq. 1 of the paper), for queries ``q`` (N × d), their positive keys ``k``
    (N × d) and the queue of negatives ``μ`` (K × d, rows of unit norm)::

        ℓ(i) = −log( exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_{j=1..K} exp(q_i·μ_j/τ)) ),
        L = 1/N Σ_i ℓ(i)

    i.e. cross-entropy over the logits ``[q·k₊, q·queue]/τ`` with target 0. ``q`` and ``k`` are
    L2-normalised here; the keys and the queue take no gradient (detached here). Computed in
    float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    q = F.normalize(q, dim=1)  # q: N x d
    k = F.normalize(k.detach(), dim=1)  # k: N x d
    l_pos = (q * k).sum(dim=1, keepdim=True)  # l_pos: N x 1
    l_neg = q @ queue.detach().to(q.dtype).T  # l_neg: N x K
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # logits: N x (1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is first
    return F.cross_entropy(logits, labels)


def enqueue(queue: Tensor, queue_ptr: Tensor, keys: Tensor) -> None:
    """Write ``keys`` (n × d) into the ring buffer ``queue`` (K × d) at ``queue_ptr``, in place.

    FIFO: the n oldest entries are replaced. Indices wrap modulo K, so K need not be a multiple of
    the batch size (the paper's restriction); when n > K only the last K keys fit. The pointer is
    a device tensor: no host sync.
    """
    size = queue.shape[0]
    n = keys.shape[0]
    if n > size:  # shapes are Python ints: no sync
        keys = keys[n - size:]
    offsets = torch.arange(n - keys.shape[0], n, device=queue.device)
    idx = (queue_ptr + offsets) % size  # idx: min(n, K), all distinct
    queue.index_copy_(0, idx, keys.to(queue.dtype))
    queue_ptr.copy_((queue_ptr + n) % size)


class Method(BaseMethod):
    """MoCo v2 in the official single direction: queries from view 1, keys from view 2.

    Query encoder ``g(f(·))``; key encoder its EMA copy, updated with a constant momentum after
    every optimiser step. The step's keys are stashed in ``forward`` and pushed onto the queue in
    ``after_step``, i.e. after the optimiser step, as in the paper's Algorithm 1.

    Several workers: each query's loss needs only its own key and the queue, so each worker takes
    it over its own rows (plain data parallel); the keys of EVERY worker are gathered and pushed
    (in global-batch order), so the queue, like the EMA key encoder, is identical on every worker
    and equal to one process's on the global batch. BatchNorm sees the global batch, as on one
    device; the paper's shuffled BN (per-GPU batches, keys shuffled across GPUs) is not
    reproduced, on one device or on many.
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.projector: nn.Module
        if cfg.mlp_head:
            # v2's head has no BN (official code); the backbone's BN is the one shuffled on GPUs.
            self.projector = mlp([backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_output_dim],
                                 batch_norm=False)
        else:
            self.projector = nn.Linear(backbone.out_dim, cfg.proj_output_dim)
        self.key_backbone = ops.copy_frozen(backbone)
        self.key_projector = ops.copy_frozen(self.projector)
        # Random unit vectors, as the official code starts the queue.
        self.register_buffer("queue", F.normalize(
            torch.randn(cfg.queue_size, cfg.proj_output_dim), dim=1))  # queue: K x d
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: Tensor | None = None  # this step's keys, until after_step

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        q = self.projector(self.backbone(x1))
        with torch.no_grad():
            k = self.key_projector(self.key_backbone(x2))
        loss = moco_loss(q, k, self.queue, self.cfg.temperature)
        # Keys for the queue (float32; float64 kept), every worker's.
        self._pending_keys = self.group.gather(F.normalize(ops.at_least_fp32(k), dim=1))
        return {"loss": loss}

    def after_step(self, step: Step) -> None:
        ops.ema_update(self.key_backbone, self.backbone, self.cfg.momentum)
        ops.ema_update(self.key_projector, self.projector, self.cfg.momentum)
        if self._pending_keys is not None:
            enqueue(self.queue, self.queue_ptr, self._pending_keys)
            self._pending_keys = None
