"""Tests for sslsearch.trial.augment: per-sample randomness, determinism, each op against its
formula."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sslsearch.errors import ConfigError
from sslsearch.trial.augment import AugmentConfig, apply_params, augment, normalize, sample_params

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
# mean 0, std 1: the output is v/255 itself, so ranges and formulas can be checked in [0, 1].
UNIT3: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
UNIT1: dict[str, Any] = {"mean": (0.0,), "std": (1.0,)}
# Crop and flip off, so colour ops can be checked pixel for pixel.
NO_GEOMETRY: dict[str, Any] = {"crop_min_scale": 1.0, "flip_p": 0.0}
# Every op on and strong; coins at 0.5 so both branches of each torch.where are exercised.
EVERYTHING = AugmentConfig(
    crop_min_scale=0.08,
    flip_p=0.5,
    jitter_strength=1.5,
    jitter_p=1.0,
    grayscale_p=0.5,
    blur_p=0.5,
    solarize_p=0.5,
)


def images(n: int = 8, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random uint8 images, N x C x size x size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def smooth_images(n: int = 8, size: int = 32) -> torch.Tensor:
    """Colourful images with structure (gradients), so crops differ from each other visibly."""
    r = torch.linspace(0, 255, size).view(1, size).expand(size, size)
    g = torch.linspace(0, 255, size).view(size, 1).expand(size, size)
    b = (r + g) / 2
    return torch.stack([r, g, 255 - b]).round().to(torch.uint8).expand(n, 3, size, size).clone()


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def run(x: torch.Tensor, cfg: AugmentConfig, seed: int = 0, **kw: Any) -> torch.Tensor:
    """augment with the unit normalisation of x's channel count unless given."""
    kw.setdefault("mean", UNIT3["mean"] if x.shape[1] == 3 else UNIT1["mean"])
    kw.setdefault("std", UNIT3["std"] if x.shape[1] == 3 else UNIT1["std"])
    return augment(x, cfg, gen(seed), **kw)


def test_identical_inputs_get_different_augmentations() -> None:
    x = smooth_images(16)  # 16 copies of one image
    out = run(x, AugmentConfig())
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(16, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3, "two samples got the same augmentation"


def test_sampled_parameters_vary_per_sample_and_stay_in_range() -> None:
    cfg = AugmentConfig(jitter_strength=1.0, blur_p=0.5, solarize_p=0.5)
    p = sample_params(4096, cfg, gen(), "cpu")
    assert all(t.shape == (4096,) for t in p.values())
    for key in ("crop_area", "crop_ratio", "crop_x", "brightness", "hue", "blur_sigma"):
        assert len(set(p[key].tolist())) > 4000, key
    assert p["crop_area"].min() >= 0.2 and p["crop_area"].max() <= 1.0
    assert p["crop_ratio"].min() >= 3 / 4 - 1e-6 and p["crop_ratio"].max() <= 4 / 3 + 1e-6
    for key in ("brightness", "contrast", "saturation"):
        assert p[key].min() >= 0.6 and p[key].max() <= 1.4
    assert p["hue"].abs().max() <= 0.1
    assert p["blur_sigma"].min() >= 0.1 and p["blur_sigma"].max() <= 2.0
    # per-sample coins land near their probabilities (4096 draws: 4 sigma is about 0.03)
    for key, prob in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("solarize", 0.5)]:
        assert p[key].dtype == torch.bool
        assert abs(p[key].float().mean().item() - prob) < 0.03, key


def test_jitter_strength_above_2_5_keeps_factors_nonnegative() -> None:
    p = sample_params(2048, AugmentConfig(jitter_strength=4.0), gen(), "cpu")
    assert p["brightness"].min() >= 0.0 and p["brightness"].max() <= 2.6
    assert p["hue"].abs().max() <= 0.4


def test_same_seed_same_output_different_seed_different_output() -> None:
    x = images()
    a, b, c = run(x, EVERYTHING, seed=1), run(x, EVERYTHING, seed=1), run(x, EVERYTHING, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_config_equals_normalize(channels: int) -> None:
    x = images(c=channels)
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.5,), (0.25,))
    out = augment(x, AugmentConfig.identity(), gen(), mean=mean, std=std)
    expected = normalize(x, mean, std)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # and normalize is the formula
    manual = (x.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(expected, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_dtype_shape_finite(channels: int, out_dtype: torch.dtype) -> None:
    x = images(n=5, c=channels, size=24)
    out = run(x, EVERYTHING, out_dtype=out_dtype)
    assert out.shape == (5, channels, 24, 24)
    assert out.dtype == out_dtype
    assert torch.isfinite(out).all()
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.5,), (0.2,))
    assert normalize(x, mean, std, out_dtype).dtype == out_dtype


def test_unnormalised_output_stays_in_unit_range() -> None:
    out = run(images(32), dataclasses.replace(EVERYTHING, jitter_strength=3.0))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_flip_without_crop_is_exact_torch_flip() -> None:
    x = images()
    cfg = dataclasses.replace(AugmentConfig.identity(), flip_p=1.0)
    torch.testing.assert_close(
        run(x, cfg), torch.flip(x, dims=[-1]).float() / 255, atol=1e-6, rtol=0
    )


def _fixed_crop(n: int, area: float, x: float, y: float, flip: bool) -> dict[str, torch.Tensor]:
    p = sample_params(n, AugmentConfig.identity(), gen(), "cpu")
    p["crop_area"] = torch.full((n,), area)
    p["crop_ratio"] = torch.ones(n)
    p["crop_x"], p["crop_y"] = torch.full((n,), x), torch.full((n,), y)
    p["flip"] = torch.full((n,), flip)
    return p


def test_crop_geometry_matches_slicing_and_flip() -> None:
    x = images(4, size=16)
    crop_on = dataclasses.replace(AugmentConfig.identity(), crop_min_scale=0.5)  # uses grid_sample
    # the whole image, flipped
    out = apply_params(x, _fixed_crop(4, 1.0, 0.5, 0.5, True), crop_on, **UNIT3)
    torch.testing.assert_close(out, torch.flip(x, dims=[-1]).float() / 255, atol=1e-5, rtol=0)
    # a quarter of the area at the top-left / bottom-right corner, read at its own resolution
    out = apply_params(x, _fixed_crop(4, 0.25, 0.0, 0.0, False), crop_on, out_size=8, **UNIT3)
    torch.testing.assert_close(out, x[..., :8, :8].float() / 255, atol=1e-5, rtol=0)
    out = apply_params(x, _fixed_crop(4, 0.25, 1.0, 1.0, False), crop_on, out_size=8, **UNIT3)
    torch.testing.assert_close(out, x[..., 8:, 8:].float() / 255, atol=1e-5, rtol=0)


def test_grayscale_p1_gives_equal_channels() -> None:
    out = run(images(), AugmentConfig(grayscale_p=1.0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    # BT.601 weights on the unmodified image
    x = images()
    gray = run(x, AugmentConfig(grayscale_p=1.0, jitter_p=0.0, **NO_GEOMETRY))[:, :1]
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close(gray, (x.float() / 255 * w).sum(1, keepdim=True))


def test_single_channel_input_gets_brightness_and_contrast_like_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = images(c=1)
    cfg = AugmentConfig(jitter_p=1.0, jitter_strength=2.0, grayscale_p=1.0, **NO_GEOMETRY)
    p = sample_params(8, cfg, gen(), "cpu")
    out = apply_params(x, p, cfg, **UNIT1)
    assert (out - x.float() / 255).abs().flatten(1).amax(1).min() > 0.01  # every image changed
    for i in range(8):  # torchvision's ColorJitter on a gray image: brightness, then contrast
        v = tvf.adjust_brightness(x[i].float() / 255, p["brightness"][i].item())
        v = tvf.adjust_contrast(v, p["contrast"][i].item())
        torch.testing.assert_close(out[i], v, atol=1e-4, rtol=0)
    # jitter off: grayscale (p = 1) has nothing to do on one channel
    off = augment(x, dataclasses.replace(cfg, jitter_p=0.0), gen(), mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(off, normalize(x, (0.5,), (0.25,)), atol=1e-6, rtol=0)
    # and the default recipe (crop, flip, jitter on) runs on it
    assert run(x, AugmentConfig()).shape == x.shape


def test_solarize_p1_matches_formula() -> None:
    x = images()
    out = run(
        x,
        AugmentConfig.for_image_size(
            32, solarize_p=1.0, jitter_p=0.0, grayscale_p=0.0, **NO_GEOMETRY
        ),
    )
    v = x.float() / 255
    torch.testing.assert_close(out, torch.where(v >= 0.5, 1 - v, v), atol=1e-6, rtol=0)


def _high_frequency_energy(v: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of horizontally and vertically adjacent pixels, per sample."""
    dx = v[..., :, 1:] - v[..., :, :-1]
    dy = v[..., 1:, :] - v[..., :-1, :]
    return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))


def test_blur_p1_lowers_high_frequency_energy() -> None:
    x = images(16, size=64)
    cfg = AugmentConfig(blur_p=1.0, jitter_p=0.0, grayscale_p=0.0, **NO_GEOMETRY)
    before = _high_frequency_energy(x.float() / 255)
    after = _high_frequency_energy(run(x, cfg))
    # sigma ~ U(0.1, 2): a sigma near 0.1 is almost a delta kernel, so "no higher" per sample
    assert (after <= before + 1e-6).all()
    assert after.mean() < 0.5 * before.mean()
    strong = _high_frequency_energy(run(x, dataclasses.replace(cfg, blur_sigma=(1.0, 2.0))))
    assert (strong < 0.5 * before).all()


def test_blur_matches_torchvision_for_a_fixed_sigma() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = images(4, size=64)  # kernel size 7 (10% of 64, made odd)
    cfg = AugmentConfig(
        blur_p=1.0, blur_sigma=(1.3, 1.3), jitter_p=0.0, grayscale_p=0.0, **NO_GEOMETRY
    )
    expected = tvf.gaussian_blur(x.float() / 255, kernel_size=[7, 7], sigma=[1.3, 1.3])
    torch.testing.assert_close(run(x, cfg), expected, atol=1e-5, rtol=0)


def test_jitter_matches_torchvision_per_sample() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = images(6)
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=0.0, **NO_GEOMETRY)
    p = sample_params(6, cfg, gen(), "cpu")
    p["hue"] = torch.zeros(6)  # our hue is a YIQ approximation: checked on its own below
    out = apply_params(x, p, cfg, **UNIT3)
    for i in range(6):  # a reference loop over samples is fine in a test
        v = x[i].float() / 255
        v = tvf.adjust_brightness(v, p["brightness"][i].item())
        v = tvf.adjust_contrast(v, p["contrast"][i].item())
        v = tvf.adjust_saturation(v, p["saturation"][i].item())
        torch.testing.assert_close(out[i], v, atol=1e-4, rtol=0)  # float rounding order differs


def test_hue_keeps_gray_pixels_and_changes_colour_ones() -> None:
    gray = images(8, c=1).expand(8, 3, 32, 32).contiguous()
    cfg = AugmentConfig(jitter_p=1.0, grayscale_p=0.0, **NO_GEOMETRY)
    p = sample_params(8, cfg, gen(), "cpu")
    for key in ("brightness", "contrast", "saturation"):
        p[key] = torch.ones(8)
    p["hue"] = torch.linspace(-0.1, 0.1, 8)
    torch.testing.assert_close(
        apply_params(gray, p, cfg, **UNIT3), gray.float() / 255, atol=1e-5, rtol=0
    )
    colour = images(8)
    shifted = apply_params(colour, p, cfg, **UNIT3)
    assert ((shifted - colour.float() / 255).abs().flatten(1).amax(1) > 0.01).all()


@pytest.mark.parametrize("crop_min_scale", [1.0, 0.08])
def test_out_size_resizes(crop_min_scale: float) -> None:
    x = images(4, size=48)
    cfg = AugmentConfig(crop_min_scale=crop_min_scale, blur_p=1.0)
    out = augment(x, cfg, gen(), mean=MEAN3, std=STD3, out_size=32)
    assert out.shape == (4, 3, 32, 32) and torch.isfinite(out).all()


def test_for_image_size_follows_methods_md() -> None:
    small, large = AugmentConfig.for_image_size(32), AugmentConfig.for_image_size(96)
    assert (small.crop_min_scale, small.blur_p) == (0.2, 0.0)
    assert (large.crop_min_scale, large.blur_p) == (0.08, 0.5)
    assert AugmentConfig.for_image_size(64).blur_p == 0.5
    assert AugmentConfig.for_image_size(96, blur_p=0.1, solarize_p=0.2).blur_p == 0.1
    assert (small.jitter_p, small.grayscale_p, small.flip_p) == (0.8, 0.2, 0.5)
    with pytest.raises(ConfigError, match="crop_min_scal"):
        AugmentConfig.for_image_size(32, crop_min_scal=0.3)


@pytest.mark.parametrize(
    "bad",
    [
        {"flip_p": 1.5},
        {"crop_min_scale": 0.0},
        {"crop_ratio": (2.0, 1.0)},
        {"blur_sigma": (0, 1)},
        {"jitter_strength": -1.0},
    ],
)
def test_invalid_config_raises(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        AugmentConfig(**bad)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="uint8"):
        augment(images().float(), AugmentConfig(), gen(), **UNIT3)
    with pytest.raises(ValueError, match="need 3"):
        augment(images(), AugmentConfig(), gen(), mean=(0.5,), std=(0.5,))


@pytest.fixture
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every Python-level way of reading a tensor's value on the host raise."""

    def forbidden(name: str) -> Callable[..., Any]:
        def raise_(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"augment called Tensor.{name} (a host<->device sync)")

        return raise_

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    yield


@pytest.mark.usefixtures("no_host_sync")
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_never_reads_values_on_the_host(channels: int) -> None:
    x = images(4, c=channels, size=64)
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.5,), (0.25,))
    out = augment(x, EVERYTHING, gen(), mean=mean, std=std, out_size=32)
    assert out.shape == (4, channels, 32, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_without_synchronising() -> None:
    x = images(16, size=64).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    augment(x, EVERYTHING, g, mean=MEAN3, std=STD3)  # warm-up: lazy CUDA init may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment(x, EVERYTHING, g, mean=MEAN3, std=STD3, out_size=32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == x.device and out.shape == (16, 3, 32, 32)
    # same generator state -> same output on CUDA too
    a = augment(x, EVERYTHING, torch.Generator(device="cuda").manual_seed(3), mean=MEAN3, std=STD3)
    b = augment(x, EVERYTHING, torch.Generator(device="cuda").manual_seed(3), mean=MEAN3, std=STD3)
    assert torch.equal(a, b)
