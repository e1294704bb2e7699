"""The image ops of the on-device augmentation (:mod:`sslsearch.trial.augment`), batched and
per-sample: each takes float images in [0, 1] (N x C x H x W) and returns the same shape and
range, with per-sample parameters as [N] tensors and no host sync."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma weights: what torchvision's rgb_to_grayscale uses.
LUMA = (0.299, 0.587, 0.114)


def _hue_rotation_terms() -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """Constant matrices A, B, C with ``T⁻¹ R(θ) T = A + cos θ · B + sin θ · C``.

    ``T`` maps RGB to YIQ (NTSC); ``R(θ)`` rotates the chroma plane (I, Q) and keeps luma Y.
    Splitting the product this way lets the per-sample 3x3 matrix be built from per-sample cos/sin
    tensors and Python-float constants, with no constant tensor copied to the device.
    """
    yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=torch.float64,
    )
    inv = torch.linalg.inv(yiq)
    keep = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # Y passes through
    cos = torch.diag(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))  # I' = cI - sQ
    sin = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    a, b, c = (inv @ m @ yiq for m in (keep, cos, sin))
    return a.tolist(), b.tolist(), c.tolist()


# Computed once at import on the CPU; used as Python floats afterwards.
HUE_A, HUE_B, HUE_C = _hue_rotation_terms()


def check_input(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """Fail early, with the offending value, on anything but uint8 N x {1,3} x H x W."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"augment: expected uint8 images N x C x H x W with C in (1, 3), got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"augment: mean {mean!r} and std {std!r} need {c} value(s) each")
    if any(isinstance(s, (int, float)) and s <= 0 for s in std):  # tensors: no host sync
        raise ValueError(f"augment: std {std!r} must be positive")


def per_sample(mask: Tensor) -> Tensor:
    """[N] bool -> [N, 1, 1, 1], to broadcast a per-sample decision over an image batch."""
    return mask.view(-1, 1, 1, 1)


def normalize_unit(
    v: Tensor, mean: Sequence[float], std: Sequence[float], out_dtype: torch.dtype
) -> Tensor:
    """(v - mean)/std per channel; mean/std as Python floats, so no constant tensor is copied."""
    out = torch.empty(v.shape, dtype=out_dtype, device=v.device)
    for ch, (m, s) in enumerate(zip(mean, std, strict=True)):  # C <= 3 kernels, not a sample loop
        torch.div(v[:, ch] - m, s, out=out[:, ch])  # writes (and casts) straight into out
    return out




def gray(v: Tensor) -> Tensor:
    """ITU-R 601 luma of RGB images: N x 3 x H x W -> N x 1 x H x W (a gray image is its own)."""
    if v.shape[1] == 1:
        return v
    r, g, b = v.unbind(dim=1)
    # add_(alpha=) fuses each multiply-add into one kernel: 3 passes instead of 5
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``blend``: factor·a + (1 - factor)·b, clamped to [0, 1]; factor is [N].

    Written as ``lerp(b, a, factor) = b + factor·(a - b)``: one fused kernel.
    """
    return torch.lerp(b.expand_as(a), a, per_sample(factor)).clamp_(0.0, 1.0)


def hue_rotate(v: Tensor, hue: Tensor) -> Tensor:
    """Shift hue by ``hue`` turns ([N]) as a rotation of the chroma plane in YIQ space.

    A cheap, vectorised approximation of torchvision's HSV hue shift: one per-sample 3x3 matrix
    ``T⁻¹ R(2π·hue) T`` applied with a batched matmul. It keeps luma and leaves gray pixels fixed,
    but unlike the HSV shift it can leave the RGB cube, hence the clamp.
    """
    n, _, h, w = v.shape
    angle = (2.0 * math.pi) * hue
    cos, sin = torch.cos(angle), torch.sin(angle)  # [N]
    rows = [
        HUE_A[i][j] + HUE_B[i][j] * cos + HUE_C[i][j] * sin for i in range(3) for j in range(3)
    ]
    m = torch.stack(rows, dim=-1).view(n, 3, 3)  # N x 3 x 3
    return torch.bmm(m, v.reshape(n, 3, h * w)).view(n, 3, h, w).clamp_(0.0, 1.0)


def blur_kernel_size(size: int) -> int:
    """SimCLR's kernel: about 10% of the image side, odd (so it has a centre), at least 3."""
    k = max(3, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def gaussian_blur(v: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` ([N], px), reflect padding.

    Each (sample, channel) plane gets its own 1-D kernel, applied as a grouped convolution over
    N·C channels (groups = N·C), horizontally then vertically.
    """
    n, c, h, w = v.shape
    k = blur_kernel_size(min(h, w))
    half = k // 2
    t = torch.arange(k, device=v.device, dtype=v.dtype) - half  # [k] tap offsets
    kernel = torch.exp(-(t**2) / (2.0 * sigma[:, None] ** 2))  # N x k
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel[:, None, :].expand(n, c, k).reshape(n * c, k)  # NC x k: a kernel per plane
    planes = F.pad(v.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    planes = F.conv2d(planes, kernel.view(n * c, 1, 1, k), groups=n * c)  # 1 x NC x H+2h x W
    planes = F.conv2d(planes, kernel.view(n * c, 1, k, 1), groups=n * c)  # 1 x NC x H x W
    return planes.view(n, c, h, w)
