"""Backbones (encoders ``f``) and the MLP head builder (projector ``g`` / predictor ``h``).

Every backbone maps an input batch to a flat feature vector and exposes ``out_dim``; the kNN monitor
and the linear probe read these features, never the projector's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from sslsearch.errors import ConfigError

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50", "mlp")


class Backbone(nn.Module):
    """An encoder with a known feature width."""

    out_dim: int


class SmallCNN(Backbone):
    """Four 3×3 conv-BN-ReLU blocks (strides 1, 2, 1, 2) and a pooled grid: for CPU runs.

    What it sees: each cell of the final map (a quarter of the input's side: 7×7 for 28 px,
    2×2 for 8 px digits) sees a 13×13 px window of the input. The map is average-pooled to at most
    ``max_grid × max_grid`` cells and flattened, so the features keep *where* each pattern is:
    one global average would keep only which 13 px patterns occur somewhere, which cannot tell a
    shirt from a coat (Fashion-MNIST, random init: global average 0.59 val kNN, 7×7 grid 0.75,
    standardised pixels 0.79; README, "Baselines"). Features: ``4·width × grid²``.
    """

    def __init__(self, in_channels: int, width: int = 32, image_size: int = 0,
                 max_grid: int = 7) -> None:
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 4]
        strides = [1, 2, 1, 2]
        layers: list[nn.Module] = []
        for c_in, c_out, s in zip(chans[:-1], chans[1:], strides, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        # Two stride-2 convolutions (padding 1): the map's side is ⌈⌈size/2⌉/2⌉. Unknown size (0,
        # an export without its data): the full grid; the pool adapts to any map it is given.
        side = math.ceil(math.ceil(image_size / 2) / 2) if image_size > 0 else max_grid
        self.grid = min(max_grid, side)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(self.grid), nn.Flatten())
        self.out_dim = chans[-1] * self.grid * self.grid

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)  # type: ignore[no-any-return]


class ResNet(Backbone):
    """torchvision's ResNet without its classifier.

    For inputs ≤ 32 px the stem is the CIFAR one (3×3 conv, stride 1, no max-pool), as in SimCLR's
    CIFAR experiments and solo-learn: the ImageNet stem would shrink a 32 px image to 8 px at once.
    """

    def __init__(self, depth: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        ctor = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                50: torchvision.models.resnet50}[depth]
        net = ctor(weights=None)
        if image_size <= 32:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class MLPEncoder(Backbone):
    """MLP encoder for tabular rows (i-Mix's domain-agnostic setting; that paper used 5 layers)."""

    def __init__(self, in_features: int, width: int = 512, depth: int = 4) -> None:
        super().__init__()
        dims = [in_features] + [width] * depth
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out),
                       nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # type: ignore[no-any-return]


def build_backbone(name: str, *, in_channels: int, image_size: int, width: int = 0) -> Backbone:
    """The encoder ``f`` named ``name``; ``width`` 0 keeps the architecture's default width."""
    if name == "small_cnn":
        return SmallCNN(in_channels, width or 32, image_size)
    if name in ("resnet18", "resnet34", "resnet50"):
        return ResNet(int(name[6:]), in_channels, image_size)
    if name == "mlp":
        return MLPEncoder(in_channels, width or 512)
    raise ConfigError(f"backbone {name!r} is unknown; choose one of: {', '.join(BACKBONES)}")


def mlp(
    dims: Sequence[int],
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_affine: bool = True,
) -> nn.Sequential:
    """Linear layers through ``dims`` with BN + ReLU between them.

    ``mlp([512, 2048, 128])`` is SimCLR's 2-layer projector. ``last_batch_norm`` adds a BN after the
    final layer (SimSiam's projector ends with BN; ``last_affine=False`` makes it parameter-free,
    as SimSiam and Barlow Twins' official code do).
    """
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least an input and an output width, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=not batch_norm or last))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_affine))
    return nn.Sequential(*layers)


def frozen(module: nn.Module) -> bool:
    """True when no parameter of ``module`` takes a gradient (asserted before the linear probe)."""
    return not any(p.requires_grad for p in module.parameters())


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


__all__ = [
    "BACKBONES",
    "Backbone",
    "MLPEncoder",
    "ResNet",
    "SmallCNN",
    "build_backbone",
    "frozen",
    "mlp",
    "set_requires_grad",
]
