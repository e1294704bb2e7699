"""Context encoder (Pathak, Krähenbühl, Donahue, Darrell & Efros, 2016, "Context Encoders: Feature
Learning by Inpainting"): drop a region of the image, encode what is left with the backbone,
decode, and inpaint the dropped region (docs/methods.md, pretext tasks)::

    L = λ_rec · L_rec + λ_adv · L_adv,   L_rec = ‖M̂ ⊙ (x − F((1 − M̂) ⊙ x))‖² / Σ M̂

M̂ is 1 on the dropped region (all channels of a dropped pixel), F the backbone followed by the
decoder. Both augmented views are used, each masked independently (2N images through the
backbone, as a two-view method). The views are standardised with the dataset's per-channel mean
and std, so the dropped region is filled with 0, the dataset mean (the paper fills it with the
mean pixel value too).

The mask shapes (:func:`context_mask`): the paper's central square (a 64-px square of its 128-px
images: a quarter of the area), its random blocks (several smaller, possibly overlapping
squares), and this project's random pixels (the paper's third shape, random regions cut from PASCAL
segmentation masks, needs masks this project does not have). Shape and masked fraction are
searchable; the defaults, random pixels at 0.1, are not the paper's central quarter, which lost
kNN accuracy in 4 epochs on Fashion-MNIST where random pixels gained (see :class:`Config`). The
paper's 7-px overlap band, weighted 10× in the loss, is left out (at 8-32 px it would be most of
the region).

Normalisation: L_rec is the mean over the masked entries (the squared error summed over the
dropped region, all channels, and divided by its number of entries), not over all the image's
entries. Then the loss's scale, and so the learning rate, does not change with the masked fraction
or the image size (a mean over all entries would shrink with the fraction), a central square is
scored exactly as the paper's code scores its patch (a mean squared error over the patch), and the
value reads as the denoising autoencoder's per-entry MSE on the masked part.

Adversarial term (off by default, ``adversarial``): a small discriminator D (no BatchNorm, see
:func:`discriminator`) tells the real view x from the inpainted one x̄ = M̂ ⊙ F(·) + (1 − M̂) ⊙ x,
with the non-saturating GAN losses ``L_adv = −log σ(D(x̄))`` for the encoder-decoder and
``L_D = −log σ(D(x)) − log(1 − σ(D(x̄)))`` for D. D judges the whole inpainted image (the paper's
D sees the central patch only), which works for every mask shape. λ_rec = 1 − λ_adv: the paper's
pair (0.999, 0.001) at λ_adv = 0.001, and the loss keeps its scale as λ_adv is searched. How one
optimiser trains both players: see :meth:`Method.forward`.

The decoder is dae's (:func:`sslsearch.methods.dae.make_decoder`: an upsampling decoder from the
small CNN's grid or a ResNet's pooled vector, an MLP for rows); it and the discriminator are
thrown away after pretraining, as a projector is. Tabular rows have no region to drop: a random
fraction of each row's features is masked whatever the mask shape (a stand-in so that the method
runs on every task, not a result of the paper; it is then dae's masking noise with the loss on the
masked features only).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.methods.dae import decode, input_width, make_decoder, random_entries
from sslsearch.parts.networks import Backbone
from sslsearch.parts.ops import fp32_loss

MASKS = ("central", "random_blocks", "random_pixels")
BLOCKS_PER_SIDE = 4  # a random block's side is a quarter of the image's: 1/16 of the area


@dataclasses.dataclass(frozen=True)
class Config:
    # One of MASKS. Random pixels, not the paper's central square: on the learning tests' FAST
    # protocol (Fashion-MNIST, 2,048 images, width-8 CNN, 4 epochs, seed 0) a central quarter
    # lost 0.6 kNN points against the random init and random blocks of ¼ lost 0.9, where random
    # pixels gained (¼: +1.3, +1.8 at twice the lr; 0.1: +2.3 at twice the lr).
    mask: str = "random_pixels"
    # The dropped fraction of the image's area (docs/methods.md: [0.1, 0.5], ¼ as in the paper; 0.1
    # here, the measured best of the FAST runs above: the hole's zeros shift the BN statistics the
    # backbone is evaluated with less, and half the pixels gained nothing: −0.1).
    mask_fraction: float = 0.1
    # The adversarial term L_adv and its discriminator (the paper: on; docs/methods.md: off by
    # default, a reconstruction-only context encoder is what the paper uses for its feature
    # learning).
    adversarial: bool = False
    # λ_adv, used when ``adversarial`` (the paper: 0.001; λ_rec = 1 − λ_adv).
    adv_weight: float = 0.001
    # Channels of the decoder's first block (dae's decoder; 32 costs about what the width-8 CNN
    # does on 28 px images).
    decoder_dim: int = 32
    # Channels of the discriminator's first conv (the second has twice as many); hidden width of
    # its MLP on rows. Only built when ``adversarial``.
    discriminator_dim: int = 32

    def check(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, found {self.mask!r}")
        if not 0 < self.mask_fraction < 1:
            raise ValueError(f"mask_fraction must be in (0, 1), found {self.mask_fraction}")
        if not 0 < self.adv_weight < 1:
            raise ValueError(f"adv_weight must be in (0, 1) (λ_rec = 1 − adv_weight), "
                             f"found {self.adv_weight}")
        if self.decoder_dim < 2:
            raise ValueError(f"decoder_dim must be ≥ 2, found {self.decoder_dim}")
        if self.discriminator_dim < 1:
            raise ValueError(f"discriminator_dim must be ≥ 1, found {self.discriminator_dim}")


def _central(n: int, h: int, w: int, fraction: float, device: torch.device | None) -> Tensor:
    side_h, side_w = max(1, round(math.sqrt(fraction) * h)), max(1, round(math.sqrt(fraction) * w))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[top:top + side_h, left:left + side_w] = True
    return mask.expand(n, h, w)


def _random_blocks(n: int, h: int, w: int, fraction: float, device: torch.device | None,
                   generator: torch.Generator | None) -> Tensor:
    side_h, side_w = max(1, round(h / BLOCKS_PER_SIDE)), max(1, round(w / BLOCKS_PER_SIDE))
    area = side_h * side_w / (h * w)
    target = max(1, round(fraction * h * w))
    # Candidates: three times the blocks that would cover the fraction if they overlapped at random
    # (1 − (1 − area)^k = fraction), so the union reaches it in practice whatever the draw.
    k = 1 if area >= 1 else math.ceil(3 * math.log(1 - fraction) / math.log(1 - area)) + 4
    top = torch.randint(0, h - side_h + 1, (n, k, 1), device=device, generator=generator)
    left = torch.randint(0, w - side_w + 1, (n, k, 1), device=device, generator=generator)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= top) & (rows < top + side_h)  # in_rows: N x k x H
    in_cols = (cols >= left) & (cols < left + side_w)  # in_cols: N x k x W
    blocks = (in_rows.unsqueeze(3) & in_cols.unsqueeze(2)).to(torch.uint8)  # N x k x H x W
    union = blocks.cummax(dim=1).values  # union[:, j]: the first j + 1 blocks together
    covered = union.flatten(2).sum(dim=2)  # covered: N x k
    pick = (covered - target).abs().argmin(dim=1)  # the first union closest to the target area
    return union[torch.arange(n, device=device), pick].bool()


def context_mask(shape: tuple[int, ...], mask: str = "central", fraction: float = 0.25, *,
                 device: torch.device | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """M̂, the boolean mask of the dropped entries (True = dropped) for a batch of ``shape``.

    Images (``shape`` N × C × H × W): an N × 1 × H × W mask, one per image, shared by the
    channels (broadcast it over C). With f = ``fraction``:

    - ``central``: the centred rectangle of ``max(1, round(√f·H))`` rows by ``max(1, round(√f·W))``
      columns, from row ``(H − rows) // 2`` and column ``(W − cols) // 2`` (an odd leftover puts
      the extra pixel below / right); the same for every image. Exact area rows·cols: at f = ¼,
      rows 7-20 × columns 7-20 of a 28-px image (196 px = ¼), rows and columns 2-5 of an 8-px
      image (16 px = ¼), 8-23 of a 32-px one.
    - ``random_blocks``: squares of ``round(H/4)`` × ``round(W/4)`` pixels (1/16 of the area at 8,
      28 and 32 px) at uniformly random positions inside the image, possibly overlapping, added
      one by one; each image keeps the union of the first blocks whose area is closest to
      ``max(1, round(f·H·W))`` pixels, so it is within half a block (1/32 of the image) of it.
    - ``random_pixels``: exactly ``max(1, round(f·H·W))`` pixels per image at uniformly random
      positions.

    Rows (``shape`` N × F; any ``mask``): exactly ``max(1, round(f·F))`` features per row at
    uniformly random positions (the tabular stand-in). Random shapes draw from ``generator`` (the
    global RNG when None; it must live on ``device``), so a seeded generator gives the same mask.
    """
    if len(shape) == 2:
        count = max(1, round(fraction * shape[1]))
        return random_entries(tuple(shape), count, device or torch.device("cpu"), generator)
    if len(shape) != 4:
        raise ValueError(f"context_mask needs N x C x H x W images or N x F rows, found {shape}")
    n, h, w = shape[0], shape[2], shape[3]
    if mask == "central":
        dropped = _central(n, h, w, fraction, device)
    elif mask == "random_blocks":
        dropped = _random_blocks(n, h, w, fraction, device, generator)
    elif mask == "random_pixels":
        count = max(1, round(fraction * h * w))
        dropped = random_entries((n, h, w), count, device or torch.device("cpu"), generator)
    else:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, found {mask!r}")
    return dropped.unsqueeze(1)


@fp32_loss
def masked_mse(x: Tensor, x_hat: Tensor, mask: Tensor) -> Tensor:
    """The inpainting error ``L_rec = ‖M̂ ⊙ (x − x̂)‖² / Σ M̂``: the mean squared error over the
    masked entries only.

    ``x``: the clean input, ``x̂ = F((1 − M̂) ⊙ x)`` its reconstruction from the masked copy (both
    N × C × H × W or N × F), ``mask``: M̂, boolean or 0/1, of the same shape or N × 1 × H × W (a
    pixel's channels together). Σ M̂ counts entries after broadcasting over the channels: a
    dropped pixel of a 3-channel image is 3 entries. An empty mask gives 0. Computed in float32
    (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    m = mask.to(x.dtype).expand_as(x)
    return ((x - x_hat).pow(2) * m).sum() / m.sum().clamp_min(1)


@fp32_loss
def context_encoder_loss(x: Tensor, x_hat: Tensor, mask: Tensor, adv_weight: float = 0.0,
                         fake_logits: Tensor | None = None) -> Tensor:
    """The context encoder's loss, ``L = (1 − λ_adv)·L_rec + λ_adv·L_adv``.

    ``L_rec = ‖M̂ ⊙ (x − x̂)‖² / Σ M̂`` (:func:`masked_mse`: the mean over the masked entries) and,
    when ``fake_logits`` is given, ``L_adv = −1/M Σ_i log σ(D(x̄_i)) = 1/M Σ_i softplus(−D(x̄_i))``,
    the non-saturating generator loss on the discriminator's logits for the M inpainted images
    x̄ (λ_rec = 1 − λ_adv: the paper's 0.999 / 0.001). Without ``fake_logits`` it is L_rec alone
    (``adv_weight`` is then ignored). Computed in float32 (float64 kept) with autocast off
    (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    rec = masked_mse(x, x_hat, mask)
    if fake_logits is None:
        return rec
    return (1 - adv_weight) * rec + adv_weight * F.softplus(-fake_logits).mean()


@fp32_loss
def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's GAN loss, ``L_D = 1/M Σ_i [softplus(−D(x_i)) + softplus(D(x̄_i))]``,
    i.e. ``−log σ(D(x)) − log(1 − σ(D(x̄)))`` averaged over the M real images x and the M
    inpainted ones x̄ (pass the latter detached: L_D must not train the encoder-decoder).
    Computed in float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def discriminator(task: Task, width: int, dim: int) -> nn.Module:
    """A small discriminator: one logit per image (or row), "real" when positive.

    Images: 4×4 conv, stride 2 (``dim`` channels), LeakyReLU(0.2), 4×4 conv, stride 2
    (2·``dim``), LeakyReLU(0.2), global average pooling and a linear logit: any size from 8 px up.
    Rows: Linear(F, ``dim``), LeakyReLU(0.2), Linear(``dim``, 1). No BatchNorm, so the real and
    the inpainted batch are judged independently of each other and the discriminator has no
    buffers (its parameters can be swapped for detached copies, :meth:`Method.forward`).
    """
    if task.kind == "image":
        return nn.Sequential(
            nn.Conv2d(width, dim, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(dim, 2 * dim, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * dim, 1))
    return nn.Sequential(nn.Linear(width, dim), nn.LeakyReLU(0.2), nn.Linear(dim, 1))


class Method(BaseMethod):
    """Context encoder (Pathak et al., 2016); decoder and discriminator are discarded after
    pretraining.

    Several workers: plain data parallel. The masks are drawn for the global batch (each image
    gets the same mask whatever the number of workers); the reconstruction error, a mean over the
    masked entries, is rescaled by this worker's share of them (below), so the mean over workers
    is the global batch's error even when masks differ in size (random blocks); the adversarial
    terms are means over equally sized shards. BatchNorm sees the global batch (the
    discriminator has none).
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.decoder = make_decoder(backbone, task, cfg.decoder_dim)
        self.discriminator: nn.Module | None = None
        if cfg.adversarial:
            self.discriminator = discriminator(task, input_width(backbone), cfg.discriminator_dim)

    def reconstruct(self, x_masked: Tensor) -> Tensor:
        """``F((1 − M̂) ⊙ x)``: the decoder's output, shaped as its input."""
        return decode(self.backbone, self.decoder, x_masked)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        x = torch.cat([x1, x2])  # x: 2N x ...: each view masked independently
        mask = self.group.sharded(
            lambda n: context_mask((2 * n, *x.shape[1:]), self.cfg.mask, self.cfg.mask_fraction,
                                   device=x.device), x1.shape[0], views=2)
        x_hat = self.reconstruct(x.masked_fill(mask, 0.0))  # the dropped region at the mean, 0
        with torch.no_grad():  # monitoring: the error relative to the mean fill's (1: no better)
            rel = masked_mse(x, x_hat, mask) / masked_mse(x, torch.zeros_like(x), mask).clamp_min(
                1e-12)
        if self.discriminator is None:
            loss = context_encoder_loss(x, x_hat, mask)
            if self.group.world_size > 1:
                loss = loss * self._share(mask).to(loss.dtype)
            return {"loss": loss, "rec_rel": rel}
        # Both players from one backward pass and one optimiser, without gradient reversal. The
        # sum minimised is (1 − λ)·L_rec + λ·L_adv + L_D, where
        # - L_adv is evaluated through a copy of D whose parameters are detached: it sends
        #   gradients to x̄ (so to the decoder and the backbone) and none to D;
        # - L_D is evaluated on x (no parameters) and x̄ detached: it sends gradients to D only.
        # So the gradient of the sum is, for the encoder-decoder, exactly the gradient of its own
        # objective, and for D exactly that of its own: one step is a simultaneous gradient step
        # of the two players (the usual GAN update, both from the same state instead of
        # alternating), and L_D's scale does not enter the encoder-decoder's update (the loss
        # logged as train_loss is the sum; train_rec_loss and train_disc_loss are the terms).
        d = self.discriminator
        inpainted = torch.where(mask, x_hat, x)  # x̄: the prediction inside M̂, the input outside
        frozen = {name: p.detach() for name, p in d.named_parameters()}
        fake_for_g = torch.func.functional_call(d, frozen, (inpainted,)).squeeze(1)
        logits = d(torch.cat([x, inpainted.detach()])).squeeze(1)  # real then fake: 4N logits
        real, fake = logits.chunk(2)
        loss_g = context_encoder_loss(x, x_hat, mask, self.cfg.adv_weight, fake_for_g)
        if self.group.world_size > 1:  # (1 − λ)·L_rec rescaled by the share, as above
            share = self._share(mask).to(loss_g.dtype)
            loss_g = loss_g + (1 - self.cfg.adv_weight) * masked_mse(x, x_hat, mask) * (share - 1)
        loss_d = discriminator_loss(real, fake)
        return {"loss": loss_g + loss_d, "rec_rel": rel,
                "rec_loss": masked_mse(x.detach(), x_hat.detach(), mask),
                "disc_loss": loss_d.detach()}

    def _share(self, mask: Tensor) -> Tensor:
        """This worker's masked entries over the mean per worker, ``m_r / (Σ_r m_r / N)``: the
        mean over workers of ``share · L_rec,r = share · sse_r / m_r`` is ``Σ sse / Σ m``, the
        global batch's L_rec (1 when every worker masks as many entries)."""
        count = mask.sum().to(torch.float64)
        return count * self.group.world_size / self.group.all_reduce_sum(count.detach())

    def embed(self, x: Tensor) -> Tensor:
        """The backbone features of the unmasked input: the decoder's output is an image, not an
        embedding."""
        return self.backbone(x)  # type: ignore[no-any-return]
