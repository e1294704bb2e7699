"""Denoising autoencoder (Vincent, Larochelle, Lajoie, Bengio & Manzagol, 2010, "Stacked Denoising
Autoencoders"): corrupt the input, encode it with the backbone, decode, and reconstruct the clean
input with a mean squared error (docs/methods.md, pretext tasks).

Both augmented views are used: each is corrupted independently and reconstructed (2N images
through the backbone, as a two-view method). The clean target is the view itself, normalised as
the backbone sees it; the corruption acts on that normalised image (docs/methods.md):

- ``gaussian``: ``x̃ = x + σ·ε``, ε ~ N(0, 1) per entry (σ in units of the per-channel std);
- ``masking``: a fraction ν of each image's pixels (all channels of a pixel together; of a row's
  features for tabular data), chosen at random, is set to 0 (for images the dataset mean: the
  views are standardised with the dataset's per-channel mean and std);
- ``salt_pepper``: a fraction ν of the pixels is set, by a fair coin per pixel, to the minimum or
  the maximum value of its channel in the batch (the paper: the minimum or maximum possible value).

The decoder (thrown away after pretraining, as a projector is) upsamples from the backbone's
features: the small CNN's pooled grid is read back as its map (4·width channels, grid × grid), any
other backbone's pooled vector goes through a linear layer to a 4 × 4 map; then conv-BN-ReLU,
bilinear upsampling to half the image side, conv-BN-ReLU, upsampling to the full side and a 3×3
conv to the image's channels. No weight depends on the image size (the sizes come from the batch),
so the same decoder serves 8, 28 and 32 px inputs. Tabular rows: an MLP from the features back to
the row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup, rows_like
from sslsearch.parts.networks import Backbone, SmallCNN, mlp
from sslsearch.parts.ops import fp32_loss

NOISES = ("gaussian", "masking", "salt_pepper")


@dataclasses.dataclass(frozen=True)
class Config:
    noise: str = "gaussian"  # one of NOISES
    # σ of the gaussian noise on the normalised image (docs/methods.md: [0.1, 1], default 0.5).
    noise_std: float = 0.5
    # ν, the fraction of pixels masked or salted (Vincent et al. use 10-40 %; ignored by gaussian).
    noise_fraction: float = 0.25
    # Channels of the decoder's first block (the second has half): 32 costs about what the width-8
    # CNN does on 28 px images; the decoder is discarded after pretraining.
    decoder_dim: int = 32

    def check(self) -> None:
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, found {self.noise!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be ≥ 0, found {self.noise_std}")
        if not 0 <= self.noise_fraction < 1:
            raise ValueError(f"noise_fraction must be in [0, 1), found {self.noise_fraction}")
        if self.decoder_dim < 2:
            raise ValueError(f"decoder_dim must be ≥ 2, found {self.decoder_dim}")


def random_entries(shape: tuple[int, ...], count: int, device: torch.device,
                   generator: torch.Generator | None = None) -> Tensor:
    """A boolean mask of ``shape`` (N × ...) with exactly ``count`` True entries per sample (of
    its P entries), at uniformly random positions (also the context encoder's random pixels)."""
    n, p = shape[0], math.prod(shape[1:])
    ranks = torch.rand(n, p, device=device, generator=generator).argsort(dim=1).argsort(dim=1)
    return (ranks < count).view(shape)  # ranks: N x P


def corrupt(x: Tensor, noise: str, noise_std: float = 0.5, noise_fraction: float = 0.25, *,
            group: ProcessGroup = ONE_PROCESS, views: int = 1) -> Tensor:
    """``x̃``, the corrupted copy of ``x`` (N × C × H × W images or N × F rows); see the module
    docstring for each noise. Masking and salt-and-pepper corrupt exactly
    ``round(noise_fraction · H·W)`` pixels of each image (of the F features of each row).

    Several workers (``group``; ``x`` holds ``views`` blocks of this worker's rows, as
    ``cat([x1, x2])``): the noise is drawn for the global batch and each worker keeps its rows
    (:meth:`ProcessGroup.sharded`), and salt-and-pepper's extremes are the global batch's.
    """
    def draw(fn: Callable[[int], Tensor]) -> Tensor:
        return group.sharded(fn, x.shape[0] // views, views=views)

    if noise == "gaussian":
        return x + noise_std * draw(lambda n: torch.randn_like(rows_like(x, views * n)))
    # Images: one choice per pixel, shared by its channels; rows: one per feature.
    pixel_shape = (1, *x.shape[2:]) if x.ndim == 4 else tuple(x.shape[1:])
    count = round(noise_fraction * math.prod(pixel_shape))
    chosen = draw(lambda n: random_entries((views * n, *pixel_shape), count, x.device))
    if noise == "masking":
        return x.masked_fill(chosen, 0.0)
    if noise == "salt_pepper":
        # The extremes per channel (images) or per feature (rows), over the (global) batch.
        reduce_dims = [0, 2, 3] if x.ndim == 4 else [0]
        low = group.extreme(x.detach().amin(dim=reduce_dims, keepdim=True), "min")
        high = group.extreme(x.detach().amax(dim=reduce_dims, keepdim=True), "max")
        salt = draw(lambda n: torch.rand((views * n, *pixel_shape), device=x.device)) < 0.5
        return torch.where(chosen, torch.where(salt, high, low), x)
    raise ValueError(f"noise must be one of {', '.join(NOISES)}, found {noise!r}")


@fp32_loss
def dae_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """The denoising reconstruction error, ``L = 1/(N·P) Σ_i ‖x_i − x̂_i‖²``.

    ``x`` is the clean input, ``x̂ = D(f(x̃))`` the reconstruction from its corrupted copy, P the
    entries per sample (C·H·W pixels, or F features): the mean squared error over every entry.
    Computed in float32 (float64 kept) with autocast off (:func:`sslsearch.parts.ops.fp32_loss`).
    """
    return (x - x_hat).pow(2).mean()


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def input_width(backbone: Backbone) -> int:
    """The channels (images) or features (rows) the backbone reads: its first layer's input."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
        if isinstance(module, nn.Linear):
            return module.in_features
    raise ValueError(f"cannot tell the input width of {type(backbone).__name__}")


class ImageDecoder(nn.Module):
    """Backbone features → an image of the requested size (see the module docstring)."""

    def __init__(self, backbone: Backbone, out_channels: int, dim: int) -> None:
        super().__init__()
        if isinstance(backbone, SmallCNN):
            self.grid = backbone.grid
            self.lift: nn.Module = nn.Identity()
            c0 = backbone.out_dim // (self.grid * self.grid)
        else:
            self.grid = 4
            self.lift = nn.Linear(backbone.out_dim, dim * self.grid * self.grid)
            c0 = dim
        self.block1 = _conv_block(c0, dim)  # at grid × grid
        self.block2 = _conv_block(dim, dim // 2)  # at half the image side
        self.out = nn.Conv2d(dim // 2, out_channels, 3, padding=1)  # at the full side

    def forward(self, f: Tensor, size: tuple[int, int]) -> Tensor:
        h = self.lift(f).view(f.shape[0], -1, self.grid, self.grid)  # h: N x c0 x g x g
        h = self.block1(h)
        half = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        h = self.block2(F.interpolate(h, size=half, mode="bilinear", align_corners=False))
        h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return self.out(h)  # type: ignore[no-any-return]


def make_decoder(backbone: Backbone, task: Task, dim: int) -> nn.Module:
    """The decoder back to the input: :class:`ImageDecoder` for images (called as
    ``decoder(f, (H, W))``), an MLP ``features → dim → F`` for rows (``decoder(f)``)."""
    if task.kind == "image":
        return ImageDecoder(backbone, input_width(backbone), dim)
    return mlp([backbone.out_dim, dim, input_width(backbone)])


def decode(backbone: Backbone, decoder: nn.Module, x: Tensor) -> Tensor:
    """``D(f(x))``, shaped as ``x`` (a decoder from :func:`make_decoder`)."""
    f = backbone(x)
    if x.ndim == 4:
        return decoder(f, (x.shape[-2], x.shape[-1]))  # type: ignore[no-any-return]
    return decoder(f)  # type: ignore[no-any-return]


class Method(BaseMethod):
    """Denoising autoencoder (Vincent et al., 2010); the decoder is discarded after pretraining.

    Several workers: plain data parallel. The loss is a mean over every entry of equally sized
    shards, so each worker takes it over its own rows; the corruption is drawn for the global
    batch (each image gets the same noise whatever the number of workers), and BatchNorm
    (backbone and decoder) sees the global batch.
    """

    def __init__(self, cfg: Config, backbone: Backbone, task: Task) -> None:
        super().__init__(cfg, backbone, task)
        self.decoder = make_decoder(backbone, task, cfg.decoder_dim)

    def reconstruct(self, x_tilde: Tensor) -> Tensor:
        """``D(f(x̃))``, shaped as ``x̃``."""
        return decode(self.backbone, self.decoder, x_tilde)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor, step: Step) -> dict[str, Tensor]:
        x = torch.cat([x1, x2])  # x: 2N x ...: each view corrupted independently
        x_tilde = corrupt(x, self.cfg.noise, self.cfg.noise_std, self.cfg.noise_fraction,
                          group=self.group, views=2)
        return {"loss": dae_loss(x, self.reconstruct(x_tilde))}

    def embed(self, x: Tensor) -> Tensor:
        """The backbone features of the clean input: the decoder's output is an image, not an
        embedding."""
        return self.backbone(x)  # type: ignore[no-any-return]
