"""Batched, per-sample-random image augmentation on the device (the SimCLR recipe).

Why: SSL pretraining is usually bottlenecked on per-sample CPU augmentation in DataLoader worker
processes, and trials packed on one GPU would fight over those cores. Here datasets stay resident
on the trial's device as ``uint8`` and a whole batch is augmented at once, every sample with its own
random parameters, fully vectorised: no Python loop over samples, no ``.item()`` / ``.cpu()``, no
host<->device copy (per-channel constants are passed as Python scalars, which travel as kernel
arguments). Shapes never depend on the random draws -- an op that a sample skips is masked out with
``torch.where`` rather than by indexing a subset -- so the pipeline suits CUDA graphs and
``torch.compile``.

The recipe (SimCLR; BYOL adds blur and solarisation), applied in this order::

    random resized crop -> horizontal flip -> colour jitter (p=0.8; brightness and contrast only
    on one channel) -> grayscale (p=0.2, three channels)
    -> Gaussian blur (images >= 64 px) -> solarise (optional) -> normalise

Known differences from torchvision's per-image transforms (all deliberate, for vectorisation):

* crop: torchvision rejection-samples (scale, ratio) until the crop fits; we sample once and clamp
  the crop's sides to the image, so very elongated draws become a little smaller than drawn.
  Bilinear resampling through ``grid_sample`` has no anti-aliasing when a large crop is shrunk.
* colour jitter: the four ops run in the fixed order brightness, contrast, saturation, hue
  (torchvision picks a random order per image), and hue is a rotation in YIQ space (a cheap linear
  approximation of torchvision's HSV hue shift; the two agree on gray pixels and roughly elsewhere).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sslsearch.config import TrialConfig
from sslsearch.errors import ConfigError
from sslsearch.trial.imageops import (
    blend,
    check_input,
    gaussian_blur,
    gray,
    hue_rotate,
    normalize_unit,
    per_sample,
)

__all__ = ["AugmentConfig", "Augmenter", "apply_params", "augment", "normalize", "sample_params"]


# torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1) of the SimCLR recipe, before ``jitter_strength``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.4, 0.1

# Columns of the single uniform draw in ``sample_params``: one RNG kernel for the whole batch.
_U_AREA, _U_RATIO, _U_X, _U_Y, _U_FLIP = 0, 1, 2, 3, 4
_U_JITTER, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_HUE = 5, 6, 7, 8, 9
_U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLAR = 10, 11, 12, 13
_N_UNIFORMS = 14






@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and probabilities of the augmentation recipe (docs/methods.md, "Shared pieces").

    Every probability is per sample. Setting a probability (or ``jitter_strength``) to 0 removes the
    op from the computation altogether, so disabled ops cost nothing.
    """

    crop_min_scale: float = 0.2
    """RandomResizedCrop area-scale lower bound (upper bound 1); 1.0 turns the crop off."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio (w/h) range of the crop, sampled log-uniformly."""
    flip_p: float = TrialConfig.flip_p  # the defaults a trial shares are TrialConfig's
    """Probability of a horizontal flip."""
    jitter_strength: float = TrialConfig.jitter_strength
    """Multiplies (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1); hue is capped at 0.5."""
    jitter_p: float = 0.8
    """Probability of colour jitter (one-channel images: brightness and contrast only)."""
    grayscale_p: float = TrialConfig.grayscale_p
    """Probability of conversion to grayscale (colour images only)."""
    blur_p: float = 0.0
    """Probability of Gaussian blur; the recipe uses 0.5 only for images >= 64 px."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Range of the blur's standard deviation, in output pixels, sampled uniformly."""
    solarize_p: float = TrialConfig.solarize_p
    """Probability of solarisation (BYOL's second view uses 0.2)."""

    def __post_init__(self) -> None:
        """Reject values outside the ranges the sampler can draw from."""
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"augment.{name}: {p!r} is not a probability (allowed: [0, 1])")
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ConfigError(
                f"augment.crop_min_scale: {self.crop_min_scale!r} (allowed: 0 < value <= 1)"
            )
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"augment.crop_ratio: {self.crop_ratio!r} (allowed: 0 < low <= high)")
        if self.jitter_strength < 0.0:
            raise ConfigError(
                f"augment.jitter_strength: {self.jitter_strength!r} (allowed: value >= 0)"
            )
        s_lo, s_hi = self.blur_sigma
        if not 0.0 < s_lo <= s_hi:
            raise ConfigError(f"augment.blur_sigma: {self.blur_sigma!r} (allowed: 0 < low <= high)")

    @classmethod
    def identity(cls) -> AugmentConfig:
        """Every op off: ``augment`` then returns exactly ``normalize(x)``."""
        return cls(
            crop_min_scale=1.0,
            crop_ratio=(1.0, 1.0),
            flip_p=0.0,
            jitter_strength=0.0,
            jitter_p=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
            solarize_p=0.0,
        )

    @classmethod
    def for_image_size(cls, size: int, **overrides: Any) -> AugmentConfig:
        """The recipe's defaults for ``size`` px images, then ``overrides`` (field names).

        Crop scale lower bound 0.2 for images <= 32 px (CIFAR practice) and 0.08 above (ImageNet);
        Gaussian blur with p = 0.5 only for images >= 64 px (SimCLR drops it on CIFAR).
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ConfigError(
                f"augment: unknown key(s) {unknown} (valid keys: {', '.join(sorted(valid))})"
            )
        kwargs: dict[str, Any] = {
            "crop_min_scale": 0.2 if size <= 32 else 0.08,
            "blur_p": 0.5 if size >= 64 else 0.0,
        }
        kwargs.update(overrides)
        return cls(**kwargs)


def sample_params(
    n: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str
) -> dict[str, Tensor]:
    """Draw every sample's augmentation parameters: a dict of ``[n]`` tensors on ``device``.

    Keys: ``crop_area`` (fraction of the image area), ``crop_ratio`` (w/h), ``crop_x``/``crop_y``
    (position of the crop within the free space, 0 = left/top edge, 1 = right/bottom edge),
    ``flip``, ``jitter``, ``grayscale``, ``blur``, ``solarize`` (bool: whether the op applies),
    ``brightness``, ``contrast``, ``saturation`` (multiplicative factors), ``hue`` (shift in turns,
    within [-0.5, 0.5]) and ``blur_sigma`` (px). All come from one ``torch.rand`` call on
    ``generator``, so the same generator state gives the same parameters whatever the config.
    """
    u = torch.rand(n, _N_UNIFORMS, generator=generator, device=device)  # N x 14, U[0, 1)
    return _params_from_uniforms(u, cfg)


def _params_from_uniforms(u: Tensor, cfg: AugmentConfig) -> dict[str, Tensor]:
    """``sample_params`` after its one random draw ``u`` (N x 14): pure tensor arithmetic."""

    def uniform(col: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * u[:, col]

    def coin(col: int, p: float) -> Tensor:
        return u[:, col] < p  # p = 0 -> never, p = 1 -> always (u < 1)

    log_r0, log_r1 = (math.log(r) for r in cfg.crop_ratio)
    s = cfg.jitter_strength
    # torchvision: factor ~ U[max(0, 1 - strength), 1 + strength]; hue ~ U[-h, h] with h <= 0.5.
    hue = min(0.5, HUE * s)
    return {
        "crop_area": uniform(_U_AREA, cfg.crop_min_scale, 1.0),
        "crop_ratio": torch.exp(uniform(_U_RATIO, log_r0, log_r1)),
        "crop_x": u[:, _U_X],
        "crop_y": u[:, _U_Y],
        "flip": coin(_U_FLIP, cfg.flip_p),
        "jitter": coin(_U_JITTER, cfg.jitter_p),
        "brightness": uniform(_U_BRIGHT, max(0.0, 1 - BRIGHTNESS * s), 1 + BRIGHTNESS * s),
        "contrast": uniform(_U_CONTRAST, max(0.0, 1 - CONTRAST * s), 1 + CONTRAST * s),
        "saturation": uniform(_U_SAT, max(0.0, 1 - SATURATION * s), 1 + SATURATION * s),
        "hue": uniform(_U_HUE, -hue, hue),
        "grayscale": coin(_U_GRAY, cfg.grayscale_p),
        "blur": coin(_U_BLUR, cfg.blur_p),
        "blur_sigma": uniform(_U_SIGMA, *cfg.blur_sigma),
        "solarize": coin(_U_SOLAR, cfg.solarize_p),
    }


def augment(
    x: Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Augment a batch with per-sample random parameters and normalise it.

    ``x``: ``uint8`` ``[N, C, H, W]`` with C = 1 or 3, on any device. ``generator`` lives on
    ``x.device`` and is the only source of randomness (same generator state -> same output).
    Returns ``(v/255 - mean)/std`` as ``out_dtype`` ``[N, C, out_size, out_size]`` (``[N, C, H, W]``
    when ``out_size`` is None). Single-channel inputs get brightness and contrast jitter only.
    """
    check_input(x, mean, std)
    if generator.device.type != x.device.type:
        raise ValueError(
            f"augment: generator is on {generator.device}, images on {x.device} (must match)"
        )
    params = sample_params(x.shape[0], cfg, generator, x.device)
    return apply_params(x, params, cfg, mean=mean, std=std, out_size=out_size, out_dtype=out_dtype)


class Augmenter:
    """``augment`` for one config, optionally through ``torch.compile``.

    The random draw (one ``torch.rand`` on the caller's generator) stays eager, so outputs match
    ``augment`` for the same generator state; everything after it is pure arithmetic on static
    shapes, which the compiler fuses from ~80 small kernels per view into a handful (on a GPU the
    eager version is launch-bound: a few ms per batch whatever the batch size).
    """

    def __init__(self, cfg: AugmentConfig, *, mean: Sequence[float], std: Sequence[float],
                 compile: bool = False, out_dtype: torch.dtype = torch.float32) -> None:
        self.cfg = cfg
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"augment: std {self.std!r} must be positive")
        self.out_dtype = out_dtype
        self._fn = torch.compile(self._apply, dynamic=False) if compile else self._apply

    def _apply(self, x: Tensor, u: Tensor) -> Tensor:
        return apply_params(x, _params_from_uniforms(u, self.cfg), self.cfg, mean=self.mean,
                            std=self.std, out_dtype=self.out_dtype)

    def __call__(self, x: Tensor, generator: torch.Generator, rows: slice | None = None
                 ) -> Tensor:
        """The augmented ``x``, or only its ``rows`` (a worker's shard of a global batch ``x``):
        the parameters are drawn for every row either way, so each image gets the same
        augmentation whichever worker augments it, and the generator advances alike."""
        check_input(x, self.mean, self.std)
        if generator.device.type != x.device.type:
            raise ValueError(
                f"augment: generator is on {generator.device}, images on {x.device} (must match)"
            )
        u = torch.rand(x.shape[0], _N_UNIFORMS, generator=generator, device=x.device)
        if rows is not None:
            x, u = x[rows], u[rows]
        out: Tensor = self._fn(x, u)
        return out


def apply_params(
    x: Tensor,
    params: dict[str, Tensor],
    cfg: AugmentConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``augment`` with given per-sample parameters (from ``sample_params``, possibly edited).

    ``cfg`` only decides which ops run at all (probability > 0); the per-sample draws come from
    ``params``.
    """
    check_input(x, mean, std)
    _, c, h, w = x.shape
    out_h, out_w = (h, w) if out_size is None else (out_size, out_size)
    v = x.to(torch.float32).div_(255.0)  # N x C x H x W in [0, 1]; the only uint8 -> float pass

    v = _crop_flip(v, params, cfg, out_h, out_w)
    if cfg.jitter_p > 0.0 and cfg.jitter_strength > 0.0:
        # One channel too: brightness and contrast apply to gray images as torchvision's
        # ColorJitter applies them (without it a gray view is crop + flip only, and contrastive
        # methods can match views by their intensity histograms).
        v = torch.where(per_sample(params["jitter"]), _color_jitter(v, params, cfg), v)
    if c == 3 and cfg.grayscale_p > 0.0:
        v = torch.where(per_sample(params["grayscale"]), gray(v).expand_as(v), v)
    if cfg.blur_p > 0.0:
        v = torch.where(per_sample(params["blur"]), gaussian_blur(v, params["blur_sigma"]), v)
    if cfg.solarize_p > 0.0:
        # torchvision's RandomSolarize(threshold=0.5) on float images: v >= 0.5 -> 1 - v.
        solarized = torch.where(v >= 0.5, 1.0 - v, v)
        v = torch.where(per_sample(params["solarize"]), solarized, v)
    # Rounding (luma weights summing to 1 + 1 ulp, interpolation, convolution) can step an ulp
    # outside [0, 1]; torchvision's outputs never do, so neither do ours.
    v = v.clamp_(0.0, 1.0)
    return normalize_unit(v, mean, std, out_dtype)


def normalize(
    x: Tensor, mean: Sequence[float], std: Sequence[float], out_dtype: torch.dtype = torch.float32
) -> Tensor:
    """``uint8`` ``[N, C, H, W]`` -> ``(v/255 - mean)/std`` as ``out_dtype``, no augmentation.

    Runs exactly the same arithmetic as ``augment``'s final step, so ``augment`` with
    ``AugmentConfig.identity()`` reproduces it bit for bit.
    """
    check_input(x, mean, std)
    return normalize_unit(x.to(torch.float32).div_(255.0), mean, std, out_dtype)


# --------------------------------------------------------------------------------------------------
# Crop and flip, colour jitter: the ops that read the config (the others are
# sslsearch.trial.imageops').


def _crop_flip(
    v: Tensor, params: dict[str, Tensor], cfg: AugmentConfig, out_h: int, out_w: int
) -> Tensor:
    """Random resized crop and horizontal flip as one per-sample affine resampling.

    With the crop off (``crop_min_scale == 1``) the flip is an exact ``torch.flip`` and a size
    change an anti-aliased resize, so the identity config touches no pixel.
    """
    n, c, h, w = v.shape
    if cfg.crop_min_scale >= 1.0:
        if cfg.flip_p > 0.0:
            v = torch.where(per_sample(params["flip"]), v.flip(-1), v)
        if (out_h, out_w) != (h, w):
            v = F.interpolate(
                v, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
            )
        return v

    # Crop sides as fractions of the image's: area = s·H·W and w/h = r in pixels (torchvision),
    # clamped to the image instead of re-drawing (see the module docstring).
    area, ratio = params["crop_area"], params["crop_ratio"]
    crop_w = torch.sqrt(area * ratio * (h / w)).clamp(max=1.0)  # [N]
    crop_h = torch.sqrt(area / ratio * (w / h)).clamp(max=1.0)  # [N]
    # Centre in grid_sample's [-1, 1] coordinates, uniform over the positions inside the image.
    cx = (1.0 - crop_w) * (2.0 * params["crop_x"] - 1.0)
    cy = (1.0 - crop_h) * (2.0 * params["crop_y"] - 1.0)
    sx = torch.where(params["flip"], -crop_w, crop_w)  # a flip mirrors output x about the centre
    zero = torch.zeros_like(crop_w)
    # theta maps output coordinates to input ones: x_in = sx·x_out + cx, y_in = crop_h·y_out + cy.
    theta = torch.stack(
        [torch.stack([sx, zero, cx], dim=-1), torch.stack([zero, crop_h, cy], dim=-1)], dim=1
    )  # N x 2 x 3
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)  # N x oh x ow x 2
    return F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)















def _color_jitter(v: Tensor, params: dict[str, Tensor], cfg: AugmentConfig) -> Tensor:
    """Brightness, contrast, saturation and hue with per-sample factors, each clamped to [0, 1].

    Computed for every sample (the caller masks out those without jitter), so shapes stay static.
    One-channel images get brightness and contrast only (torchvision's ColorJitter on a gray
    image: saturation and hue have nothing to act on).
    """
    # brightness: blend with black
    v = (v * per_sample(params["brightness"])).clamp_(0.0, 1.0)
    # contrast: blend with the image's mean gray level (a scalar per image, as in torchvision)
    v = blend(v, gray(v).mean(dim=(1, 2, 3), keepdim=True), params["contrast"])
    if v.shape[1] == 1:
        return v
    # saturation: blend with the image's grayscale version
    v = blend(v, gray(v), params["saturation"])
    if min(0.5, HUE * cfg.jitter_strength) > 0.0:
        v = hue_rotate(v, params["hue"])
    return v






