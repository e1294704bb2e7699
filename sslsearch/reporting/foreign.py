"""Encoders from elsewhere: a torchvision-layout ResNet state dict, loaded without running code.

The official VICReg and Barlow Twins ResNet-50 checkpoints (and most SSL libraries' exports) are a
``state_dict`` of torchvision's ``resnet50`` with its classifier ``fc`` dropped or replaced by an
identity. This module reads such a file, from ``.pt``/``.pth`` through
``torch.load(weights_only=True)`` (its unpickler builds tensors and containers and refuses any
other global, so a file with code in it is refused, never run) or from ``.safetensors`` (no
pickle at all), and loads it strictly into the matching :class:`~sslsearch.parts.networks.ResNet`:

- keys: a wrapper's prefix (``module.``, ``backbone.``, ``encoder.``, ``net.``; a checkpoint
  nesting its weights under ``state_dict`` or ``model``) is removed, ``fc.*`` is dropped;
- architecture, read off the weights: the depth from the blocks (``layerN.M``) and whether they
  are bottlenecks (``conv3``), the input channels from ``conv1``, the stem from ``conv1``'s kernel
  (3×3: the CIFAR stem of :class:`ResNet`, for ≤ 32 px; 7×7: the ImageNet stem);
- anything else (another architecture, missing or extra tensors, wrong shapes) is a
  :class:`~sslsearch.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch.errors import ConfigError
from sslsearch.parts.networks import ResNet

PREFIXES = ("module.", "backbone.", "encoder.", "net.")
NESTED = ("state_dict", "model")
# Blocks per stage: how torchvision builds each depth (BasicBlock for 18/34, Bottleneck for 50).
DEPTHS: dict[tuple[int | bool, ...], int] = {
    (2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of ``path`` (``.safetensors``, else a torch file read with
    ``weights_only=True``), unwrapped from ``state_dict``/``model`` nesting."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own types on a truncated or lying file
            raise ConfigError(f"{path}: not a readable safetensors file ({_line(exc)})") from None
    try:
        with warnings.catch_warnings():  # torch's notes on old pickle protocols: not the user's
            warnings.simplefilter("ignore")
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (code in it), EOFError, zip errors (truncated)
        raise ConfigError(f"{path}: not a weights-only torch state dict ({_line(exc)})") from None
    for key in NESTED:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ConfigError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(obj)


def torchvision_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with a wrapper's key prefix removed and the classifier ``fc.*`` dropped."""
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k.removeprefix(prefix): v for k, v in out.items()}
                changed = True
    return {k: v for k, v in out.items() if not k.startswith("fc.")}


def resnet_spec(state: Mapping[str, Tensor], path: Path) -> tuple[int, int, int]:
    """(depth, input channels, stem image size) of a torchvision ResNet state dict."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        raise ConfigError(f"{path}: not a torchvision ResNet state dict (no conv1.weight); "
                          "give an sslsearch export folder or a ResNet-18/34/50 state dict")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    bottleneck = any(k.startswith("layer1.0.conv3") for k in state)
    depth = DEPTHS.get((*blocks, bottleneck))
    if depth is None:
        raise ConfigError(f"{path}: a ResNet with {list(blocks)} blocks per stage"
                          f"{' (bottlenecks)' if bottleneck else ''} is not ResNet-18, 34 or 50")
    stem = 32 if int(conv1.shape[-1]) == 3 else 224
    return depth, int(conv1.shape[1]), stem


def load_torchvision_resnet(path: str | Path) -> tuple[ResNet, dict[str, Any]]:
    """The encoder of a torchvision-layout ResNet state dict at ``path``, loaded strictly, in eval
    mode, and what was read off it (``backbone``, ``in_channels``, ``image_size`` of its stem)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{file}: no such file")
    state = torchvision_keys(read_state_dict(file))
    depth, channels, stem = resnet_spec(state, file)
    encoder = ResNet(depth, channels, stem)
    try:
        encoder.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{file}: its tensors do not fit torchvision's resnet{depth} "
                          f"({_line(exc)})") from None
    encoder.eval()
    return encoder, {"backbone": f"resnet{depth}", "in_channels": channels, "image_size": stem}


def _line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
