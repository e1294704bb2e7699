"""Rotation prediction (Gidaris, Singh & Komodakis, 2018, "Unsupervised Representation Learning by
Predicting Image Rotations"): the backbone sees each image turned by 0°, 90°, 180° or 270° and a
small head on its features names the angle, a 4-way cross-entropy (docs/methods.md, pretext tasks).

Rotated copies: ``rotations_per_image`` (r, 1–4) distinct angles per image, drawn at random (all
four, as in the paper, at r = 4); copy j is taken from view ``1 + j mod 2``, so the two augmented
views the loop provides are both used and r = 2 costs what a two-view method costs (2N images
through the backbone). All copies go through the backbone as one batch (one set of BN statistics,
as in the paper's batches of the four rotations).

Tabular rows have no image to turn (the paper is image-only): there the four "rotations" are the
cyclic shifts of the feature vector by ``k·⌊F/4⌋`` positions, the same group (C4) acting on the
feature index. A stand-in so that the method runs on every task, not a result of the paper.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss

NUM_ROTATIONS = 4  # 0°, 90°, 180°, 270°: label k means a turn of k·90° counter-clockwise


@dataclasses.dataclass(frozen=True)
class Config:
    # Angles shown per image (distinct, at random below 4). The paper feeds all four; 2 costs as
    # much as a two-view method (each view once), 4 twice that.
    rotations_per_image: int = 4
    # The classifier head on the backbone's features: 0 = linear (the paper's classifier on top of
    # its conv blocks is linear-ish); > 0 = Linear-BN-ReLU of that width, then the 4-way Linear.
    head_hidden_dim: int = 0

    def check(self) -> None:
        if not 1 <= self.rotations_per_image <= NUM_ROTATIONS:
            raise ValueError(f"rotations_per_image must be in 1..{NUM_ROTATIONS}, "
                             f"found {self.rotations_per_image}")
        if self.head_hidden_dim < 0:
            raise ValueError(f"head_hidden_dim must be ≥ 0 (0: a linear head), "
                             f"found {self.head_hidden_dim}")


def rotate(x: Tensor, k: Tensor) -> Tensor:
    """Each sample ``x[i]`` turned by ``k[i]·90°`` counter-clockwise (``k`` in 0..3, a long tensor).

    Images (N × C × H × W, square): ``torch.rot90`` in the (H, W) plane, so for k = 1 the top row
    becomes the left column read bottom-up. Tabular rows (N × F): a cyclic shift by ``k·⌊F/4⌋``
    (``torch.roll``: entry j moves to j + k·⌊F/4⌋ mod F). No host sync: all four turns are
    computed and each sample picks its own.
    """
    if x.ndim == 4:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation needs square images, found {tuple(x.shape[-2:])}")
        turns = [torch.rot90(x, r, dims=(-2, -1)) for r in range(NUM_ROTATIONS)]
    elif x.ndim == 2:
        step = x.shape[1] // NUM_ROTATIONS
        if step == 0:
            raise ValueError(f"rotation needs ≥ {NUM_ROTATIONS} features, found {x.shape[1]}")
        turns = [torch.roll(x, r * step, dims=1) for r in range(NUM_ROTATIONS)]
    else:
        raise ValueError(f"rotation needs N x C x H x W images or N x F rows, found {x.shape}")
    stacked = torch.stack(turns)  # stacked: 4 x N x ...
    return stacked[k, torch.arange(x.shape[0], device=x.device)]


def rotated_copies(x1: Tensor, x2: Tensor, rotations_per_image: int,
                   generator: torch.Generator | None = None, *,
                   group: ProcessGroup = ONE_PROCESS) -> tuple[Tensor, Tensor]:
    """The rotated batch and its labels: r = ``rotations_per_image`` distinct random angles per
    image, copy j from ``x1`` (j even) or ``x2`` (j odd). Returns ``(images, labels)`` of rN rows,
    copy-major (rows j·N … j·N + N − 1 are copy j of every image). The angles are drawn for
    ``group``'s global batch, this worker's rows kept (:meth:`ProcessGroup.sharded`)."""
    n = x1.shape[0]
    # Each image's angles: the first r entries of a uniformly random permutation of 0..3.
    scores = group.sharded(lambda m: torch.rand(m, NUM_ROTATIONS, generator=generator,
                                                device=x1.device), n)
    angles = scores.argsort(dim=1)[:, :rotations_per_image]  # angles: N x r
    images = [rotate(x1 if j % 2 == 0 else x2, angles[:, j]) for j in range(rotations_per_image)]
    return torch.cat(images), angles.T.reshape(-1)  # rN x ..., rN


@fp32_loss
def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The 4-way rotation cross-entropy, ``L = −1/M Σ_i log softmax(logits_i)_{k_i}``.

    ``logits``: M × 4 head outputs for M rotated images, ``labels``: their angles ``k_i`` ∈ {0, 1,
    2, 3} (turns of ``k_i·90°``). Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    return F.cross_entropy(logits, labels)


class Method(BaseMethod):
    """Rotation prediction (Gidaris et al., 2018); the head is thrown away after pretraining.

    Several workers: plain data parallel. The loss is a mean of per-image terms, so each worker
    takes it over its own rows; the angles are drawn for the global batch (each image gets the
    same angles whatever the number of workers), and BatchNorm sees the global batch.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        hidden = [cfg.head_hidden_dim] if cfg.head_hidden_dim > 0 else []
        self.head = mlp([backbone.out_dim, *hidden, NUM_ROTATIONS])

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        images, labels = rotated_copies(x1, x2, self.cfg.rotations_per_image,
                                        group=self.group)
        logits = self.head(self.backbone(images))  # logits: rN x 4
        loss = rotation_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "rotation_acc": accuracy}

    def embed(self, x: Tensor) -> Tensor:
        """The backbone features: the head is a 4-way classifier, not an embedding. (Random-init
        width-8 CNN on Fashion-MNIST: std ratio 0.43, rank ratio 0.38, far above the collapse
        thresholds 0.03 / 0.06.)"""
        return self.backbone(x)  # type: ignore[no-any-return]
