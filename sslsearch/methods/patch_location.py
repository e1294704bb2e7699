"""Relative patch location (Doersch, Gupta & Efros, 2015, "Unsupervised Visual Representation
Learning by Context Prediction"): two patches of one image go through the same backbone (siamese);
a head on their concatenated features names where the second patch lies relative to the first
among its 8 neighbours in a 3×3 grid, an 8-way cross-entropy (docs/methods.md, pretext tasks).

The grid and the labels. Square cells of ``cell_size`` px, ``gap`` px apart; patch 1 is the centre
cell, patch 2 one of its 8 neighbours, labelled in reading order (the paper's figure 2)::

    +---+---+---+
    | 0 | 1 | 2 |      label → offset (rows, columns) of patch 2's cell from patch 1's:
    +---+---+---+      0 (−1, −1)   1 (−1, 0)   2 (−1, +1)
    | 3 | · | 4 |      3 ( 0, −1)               4 ( 0, +1)
    +---+---+---+      5 (+1, −1)   6 (+1, 0)   7 (+1, +1)
    | 5 | 6 | 7 |
    +---+---+---+      (one cell step is cell_size + gap px; "·" is patch 1)

Per image, the grid's top-left corner is drawn uniformly among the positions where the whole
3×3 grid (``3·cell + 2·gap`` px) fits, so patch 1 is any cell whose 8 neighbours all fit and the
label is independent of where patch 1 is (were only the pair required to fit, a patch 1 at the top
border would rule out labels 0-2, a shortcut). Then each of the two patches is moved by its own
``(dy, dx)``, each uniform in ``−jitter..jitter`` px and clamped to the image (a cell on the
image's border moves only inward). Gap and jitter are the paper's guards against trivial
shortcuts: with no gap, patch 2 would be found by matching the pixels along a shared edge
(low-level continuity), and without jitter by lining up straight lines across the gap. The
patches' borders are ``gap + (difference of the jitters)`` px apart, between ``gap − 2·jitter``
and ``gap + 2·jitter`` (they may overlap by up to ``2·jitter − gap`` px); ``2·jitter < cell +
gap`` keeps patch 2 on the labelled side of patch 1.

Adapted to 28–32 px (the paper: 96 px patches, 48 px gaps, up to 7 px jitter in ~400 px images):
lengths are given in pixels of a 28 px image (Fashion-MNIST), where the default grid of 8 px cells
and 2 px gaps spans the whole image (3·8 + 2·2 = 28), without jitter: on the learning test's FAST
protocol it gained +1.8, 1.2, 2.1, 1.7, 4.8 val kNN points (seeds 0-4) where 1 px gaps with 1 px
jitter gained +1.5, −0.8, +0.8 (seeds 0-2). docs/methods.md's 8-9 px cells and 1-2 px gaps do not
all combine in 28 px (9 px cells leave room for no gap: 3·9 = 27). At another side S every length is
scaled by S/28 and floored (32 px CIFAR: 9 px cells, 2 px gaps, 31 px), so a grid that fits 28 px
fits every size: :meth:`Config.check` tests ``3·cell_size + 2·gap ≤ 28`` when the config is
built, and the first forward raises a ValueError if the image is so small that a cell rounds to
0 px (the 8 px digits get 2 px cells, no gap, no jitter: a stand-in that keeps the method
runnable there, not the paper's setting).

How patches are fed (``resize_patches``): by default each patch is resized (bilinear) up to the
image's size before the backbone. The kNN monitor and the probe read the backbone on whole images,
and the backbone's BatchNorm statistics (used at evaluation) and its pooled grid are those of the
inputs it trained on: resized patches have the whole images' size and layout, so the pooled grid
cells and the BN statistics match what evaluation feeds it. Fed at their native 8 px, the small
CNN's 2×2 map is stretched to its 7×7 pooled grid and its BN statistics are those of tiny inputs
dominated by padding: on the learning test's FAST protocol (seed 0, 8 px cells, 1 px gaps and
jitter) native patches lose 0.8 val kNN points against the random init where resized ones gain
1.7. ``resize_patches: false`` keeps them at native size (cheaper: 4N patches of 64 px rather
than 784 px, about a third of the time).

Both augmented views are used: from each view, patch 1 paired with ``neighbours`` of its 8
neighbours (different positions and labels per view), so 2·k·N pairs per batch and 2N + 2·k·N
patches through the backbone as one batch (one set of BN statistics; patch 1 goes through once
however many neighbours it pairs with). The views are whole images (no random-resized crop unless
``crop_views``), flipped and jittered as the trial says, as the paper cuts patches from the whole
image.

Defaults, measured on ``experiments/fashion_mnist.yaml`` (6 epochs, val kNN over the random init,
seeds 0-4; ``python -m sslsearch.train --experiment fashion_mnist --method patch_location --seed S
--set probe=false --set label_free=false``): all 8 neighbours on uncropped views gain +3.7, +6.9,
+3.1, +0.8, +7.0 (4.3 ± 2.7, min 0.8). One neighbour on the experiment's crop (0.3), this
module's earlier default, gained +1.6 and +0.9 (seeds 0, 1); one neighbour uncropped +2.4, +1.6;
8 neighbours on the crop +0.7, +5.0. The patches are nearly as easy to place either way (the loss
falls to about 0.5 nats of 2.08 in 6 epochs: with the whole 28 px taken by the grid, the 8
positions are fixed regions of centred clothes), so what helps is more labels per image, not a
harder task. The head (thrown away after pretraining): ``[f(p₁), f(p₂)]`` (2·out_dim) →
Linear-BN-ReLU of ``head_hidden_dim`` → 8 logits (0: a linear head).

Tabular rows have no 2-D layout (the paper is image-only). Stand-in: the row's first 9·⌊F/9⌋
features are cut into 9 contiguous chunks read as the 3×3 grid in reading order (chunk 4 is the
centre); patch 1 is the centre chunk, patch 2 the chunk of the label's cell, and each is written
into the centre chunk's slot of an otherwise zero row (so its position in the row tells nothing).
No gap or jitter there. A stand-in so that the method runs on every task, not a result of the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup
from sslsearch.parts.networks import Backbone, mlp
from sslsearch.parts.ops import fp32_loss

NUM_POSITIONS = 8
REFERENCE_SIZE = 28  # the side (px) in which cell_size, gap and jitter are given
# (rows, columns) offset of patch 2's cell from patch 1's, by label: the 8 neighbours in reading
# order (the module docstring's picture).
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclasses.dataclass(frozen=True)
class Config:
    # Lengths in pixels of a 28 px image (scaled by side/28 elsewhere). docs/methods.md: 8-9 px
    # cells, 1-2 px gaps for 28 px. The grid must fit: 3·cell_size + 2·gap ≤ 28.
    cell_size: int = 8
    gap: int = 2
    # Each patch moved by up to this many px along each axis (the paper: 7 px of 96 px patches);
    # 0 by default: 1 px with 1 px gaps learned less (the module docstring).
    jitter: int = 0
    # Patches resized up to the image's size before the backbone (see the module docstring).
    resize_patches: bool = True
    # The head on the concatenated features: 0 = linear; > 0 = Linear-BN-ReLU of that width,
    # then the 8-way Linear (the paper: two 4096-wide fully connected layers).
    head_hidden_dim: int = 256
    # Pairs per image and view: patch 1 with this many of its 8 neighbours (distinct; the paper:
    # 1). More pairs give more position labels per image at the price of more patches: all 8 by
    # default, 9N patches per view through the backbone rather than 2N (about 4x the time), since
    # 1 fell short on Fashion-MNIST (the module docstring).
    neighbours: int = 8
    # The views' random-resized crop (the trial's crop_min_scale): off by default, as in the
    # paper, which cuts its patches from the whole image. The grid then spans the same content
    # in every view, and a crop that magnifies part of the image does not change what one cell
    # step means (on Fashion-MNIST the experiment's crop at 0.3 cut the gain: the module
    # docstring). Flip and jitter still apply.
    crop_views: bool = False

    def check(self) -> None:
        if self.cell_size < 1:
            raise ValueError(f"cell_size must be ≥ 1 px, found {self.cell_size}")
        if self.gap < 0:
            raise ValueError(f"gap must be ≥ 0 px, found {self.gap}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be ≥ 0 px, found {self.jitter}")
        span = grid_span(self.cell_size, self.gap)
        if span > REFERENCE_SIZE:
            raise ValueError(
                f"the 3×3 grid does not fit a {REFERENCE_SIZE} px image: 3·cell_size + 2·gap = "
                f"3·{self.cell_size} + 2·{self.gap} = {span} px > {REFERENCE_SIZE} (the lengths "
                f"are px of a {REFERENCE_SIZE} px image)")
        if 2 * self.jitter >= self.cell_size + self.gap:
            raise ValueError(
                f"jitter must be below (cell_size + gap) / 2 = {(self.cell_size + self.gap) / 2}"
                f" (else patch 2 can land on the other side of patch 1), found {self.jitter}")
        if not 1 <= self.neighbours <= NUM_POSITIONS:
            raise ValueError(f"neighbours must be in 1..{NUM_POSITIONS}, found {self.neighbours}")
        if self.head_hidden_dim < 0:
            raise ValueError(f"head_hidden_dim must be ≥ 0 (0: a linear head), "
                             f"found {self.head_hidden_dim}")


def grid_span(cell: int, gap: int) -> int:
    """The side (px) of the 3×3 grid: ``3·cell + 2·gap``."""
    return 3 * cell + 2 * gap


def scaled_grid(cell_size: int, gap: int, jitter: int, side: int) -> tuple[int, int, int]:
    """``(cell, gap, jitter)`` in px for images of ``side`` px: each length (given for a 28 px
    image) times ``side / 28``, floored, so the grid fits ``side`` whenever it fits 28 px. Raises
    ValueError when the cell comes out below 1 px."""
    cell = cell_size * side // REFERENCE_SIZE
    if cell < 1:
        raise ValueError(f"patch_location: cell_size {cell_size} (px of a {REFERENCE_SIZE} px "
                         f"image) is {cell} px on {side} px images; images need a side ≥ "
                         f"{-(-REFERENCE_SIZE // cell_size)} px")
    return cell, gap * side // REFERENCE_SIZE, jitter * side // REFERENCE_SIZE


def crop(x: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """``x[i, :, top[i]:top[i]+size, left[i]:left[i]+size]`` for every i, as N × C × size × size.

    One gather (advanced indexing) for the whole batch: no host sync, no loop over samples.
    """
    steps = torch.arange(size, device=x.device)
    rows = (top.unsqueeze(1) + steps).unsqueeze(2)  # rows: N x size x 1
    cols = (left.unsqueeze(1) + steps).unsqueeze(1)  # cols: N x 1 x size
    index = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    return x.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def _randint(low: int, high: int, size: tuple[int, ...], device: torch.device,
             generator: torch.Generator | None) -> Tensor:
    """Uniform integers in ``low..high`` (both included)."""
    return torch.randint(low, high + 1, size, generator=generator, device=device)


def patch_pairs(x: Tensor, cell: int, gap: int, jitter: int,
                generator: torch.Generator | None = None, neighbours: int = 1, *,
                group: ProcessGroup = ONE_PROCESS) -> tuple[Tensor, Tensor, Tensor]:
    """``(patch1, patch2, labels)`` for N × C × H × W images, lengths in px of these images.

    Per image: the grid's corner uniform where the grid fits (rows 0 .. ``H − 3·cell − 2·gap``,
    columns likewise), patch 1 the centre cell, and ``neighbours`` (1-8) distinct labels drawn
    uniformly, each giving a patch 2 at the cell ``OFFSETS[label]`` (one step = ``cell + gap``
    px); every patch moved by its own jitter (uniform in ``−jitter..jitter`` per axis) and clamped
    to the image. ``patch1`` is N × C × cell × cell; ``patch2`` (k·N × C × cell × cell) and
    ``labels`` (k·N) are neighbour-major: rows ``j·N .. j·N + N − 1`` are the j-th neighbour of
    images 0..N−1, so each pairs with ``patch1.repeat(k, 1, 1, 1)``. Raises ValueError if the grid
    does not fit. Every position is drawn for ``group``'s global batch, this worker's rows kept
    (:meth:`ProcessGroup.sharded`).
    """
    n, _, height, width = x.shape
    span = grid_span(cell, gap)
    if span > min(height, width) or cell < 1:
        raise ValueError(f"patch_location: the 3×3 grid (3·{cell} + 2·{gap} = {span} px) does "
                         f"not fit {height} × {width} images")
    if not 1 <= neighbours <= NUM_POSITIONS:
        raise ValueError(f"neighbours must be in 1..{NUM_POSITIONS}, found {neighbours}")
    step = cell + gap
    top = group.sharded(lambda m: _randint(0, height - span, (m,), x.device, generator), n)
    left = group.sharded(lambda m: _randint(0, width - span, (m,), x.device, generator), n)
    corner = torch.stack([top, left], dim=1)  # corner: N x 2 (row, column)
    if neighbours == 1:
        labels = group.sharded(lambda m: _randint(0, NUM_POSITIONS - 1, (1, m), x.device,
                                                  generator), n, dim=1)
    else:  # k distinct positions per image: the first k of a random permutation of the 8
        draws = group.sharded(lambda m: torch.rand(m, NUM_POSITIONS, generator=generator,
                                                   device=x.device), n)
        labels = draws.argsort(dim=1)[:, :neighbours].T  # labels: k x N
    shift = group.sharded(lambda m: _randint(-jitter, jitter, (1 + neighbours, m, 2), x.device,
                                             generator), n, dim=1)
    offsets = torch.tensor(OFFSETS, device=x.device)[labels]  # offsets: k x N x 2
    limit = torch.tensor([height - cell, width - cell], device=x.device)
    first = torch.minimum(torch.clamp(corner + step + shift[0], min=0), limit)
    second = torch.minimum(torch.clamp(corner + step * (1 + offsets) + shift[1:], min=0), limit)
    second = second.reshape(-1, 2)  # neighbour-major: k·N x 2
    return (crop(x, first[:, 0], first[:, 1], cell),
            crop(x.repeat(neighbours, 1, 1, 1), second[:, 0], second[:, 1], cell),
            labels.reshape(-1))


def chunk_pairs(x: Tensor, generator: torch.Generator | None = None, *,
                group: ProcessGroup = ONE_PROCESS) -> tuple[Tensor, Tensor, Tensor]:
    """The tabular stand-in: ``(row1, row2, labels)`` for N × F rows (module docstring). Chunk k
    (k = 0..8, ⌊F/9⌋ features from k·⌊F/9⌋) is cell (k // 3, k % 3); both outputs are zero rows
    with the centre chunk (row1) or the label's chunk (row2) written at the centre chunk's slot."""
    n, features = x.shape
    size = features // 9
    if size == 0:
        raise ValueError(f"patch_location needs ≥ 9 features (9 chunks), found {features}")
    labels = group.sharded(lambda m: _randint(0, NUM_POSITIONS - 1, (m,), x.device, generator),
                           n)
    chunk = labels + (labels >= 4).long()  # the label's cell in reading order, skipping 4
    index = chunk.unsqueeze(1) * size + torch.arange(size, device=x.device)  # index: N x size
    centre = slice(4 * size, 5 * size)
    first, second = torch.zeros_like(x), torch.zeros_like(x)
    first[:, centre] = x[:, centre]
    second[:, centre] = x.gather(1, index)
    return first, second, labels


@fp32_loss
def patch_location_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The 8-way position cross-entropy, ``L = −1/M Σ_i log softmax(logits_i)_{k_i}``.

    ``logits``: M × 8 head outputs for M pairs of patches, ``labels``: the position ``k_i`` ∈ 0..7
    of patch 2 relative to patch 1 (reading order, the module docstring's picture). Computed in
    float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    return F.cross_entropy(logits, labels)


class Method(BaseMethod):
    """Relative patch location (Doersch et al., 2015); the head is thrown away after pretraining.

    Several workers: plain data parallel. The loss is a mean of per-pair terms, so each worker
    takes it over its own rows; the grid, positions and jitter are drawn for the global batch
    (each image gets the same pairs whatever the number of workers), and BatchNorm sees the
    global batch.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        hidden = [cfg.head_hidden_dim] if cfg.head_hidden_dim > 0 else []
        self.head = mlp([2 * backbone.out_dim, *hidden, NUM_POSITIONS])

    def view_overrides(self) -> dict[str, Any]:
        """No random crop unless ``crop_views``: patches are cut from the whole image."""
        return {} if self.cfg.crop_views else {"crop_min_scale": 1.0}

    def pairs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch pairs from one view: image patches (resized to the image's size unless
        ``resize_patches`` is off) or the tabular stand-in's rows; N first patches, k·N second
        ones and their labels, neighbour-major (:func:`patch_pairs`; k = 1 for rows)."""
        if x.ndim == 2:
            return chunk_pairs(x, group=self.group)
        if x.ndim != 4:
            raise ValueError(f"patch_location needs N x C x H x W images or N x F rows, "
                             f"found {tuple(x.shape)}")
        height, width = x.shape[-2:]
        cfg = self.cfg
        cell, gap, jitter = scaled_grid(cfg.cell_size, cfg.gap, cfg.jitter, min(height, width))
        first, second, labels = patch_pairs(x, cell, gap, jitter, neighbours=cfg.neighbours,
                                            group=self.group)
        if cfg.resize_patches:
            first, second = (F.interpolate(p, size=(height, width), mode="bilinear",
                                           align_corners=False) for p in (first, second))
        return first, second, labels

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        a1, a2, labels_a = self.pairs(x1)  # pairs from each view
        b1, b2, labels_b = self.pairs(x2)
        n, k = a1.shape[0], a2.shape[0] // a1.shape[0]
        # One BN batch: 2N first patches (each through the backbone once, however many
        # neighbours it pairs with), then 2·k·N second ones.
        features = self.backbone(torch.cat([a1, b1, a2, b2]))
        fa1, fb1, f2 = features.split([n, n, 2 * k * n])
        f1 = torch.cat([fa1.repeat(k, 1), fb1.repeat(k, 1)])  # aligned with f2's rows
        logits = self.head(torch.cat([f1, f2], dim=1))  # logits: 2N x 8
        labels = torch.cat([labels_a, labels_b])
        loss = patch_location_loss(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "location_acc": accuracy}

    def embed(self, x: Tensor) -> Tensor:
        """The backbone features of whole inputs: the head is an 8-way classifier of pairs, not
        an embedding."""
        return self.backbone(x)  # type: ignore[no-any-return]
