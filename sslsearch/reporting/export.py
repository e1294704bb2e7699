"""Export a trained encoder as safetensors weights + its config, and load it back in one line.

An export is a folder holding

* ``encoder.safetensors``: the backbone's ``state_dict`` (safetensors: no pickle, so loading runs
  no code; memory-mapped, so loading is zero-copy). Its header metadata carries the same config
  as ``config.json``, so the file alone is enough to rebuild the encoder;
* ``config.json``: what built the encoder (backbone name, input channels, image size, width), how
  to feed it (input kind, per-channel mean/std for normalisation), the full ``TrialConfig``
  (``trial``) and where it came from (``provenance``: method, data set name, digest and split
  sizes, sweep and trial ids, the accuracy it was chosen on and its baselines, where known).

Load it with::

    encoder = sslsearch.load_encoder("sslsearch_results/<sweep>/best_encoder")  # nn.Module, eval
    features = encoder(normalised_images)   # (N, encoder.out_dim)

or, for a ResNet, into torchvision's own model (:func:`torchvision_state_dict`: no sslsearch
needed at the other end but this one function's few lines).

Torch and safetensors only: no Ray, Optuna or MLflow (the export runs on a bare GPU machine too).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch.config import TrialConfig
from sslsearch.data.digest import dataset_record
from sslsearch.errors import ConfigError
from sslsearch.parts.networks import Backbone, build_backbone

WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"
FORMAT = "sslsearch-encoder"
VERSION = 1
_META_KEY = "sslsearch_config"


def backbone_state(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``backbone.*`` entries of a method's ``state_dict`` (a trial checkpoint's ``model``)."""
    return {k.removeprefix("backbone."): v for k, v in model_state.items()
            if k.startswith("backbone.")}


def _build_args(name: str, state: Mapping[str, Tensor]) -> dict[str, int]:
    """``in_channels``, ``image_size`` and ``width`` of a backbone, read off its weights.

    Only what changes the architecture: a ResNet's stem is 3×3 for images ≤ 32 px (any size
    ≤ 32 builds the same network) and 7×7 above; the small CNN and the MLP ignore the size.
    """
    try:
        if name == "small_cnn":
            w = state["features.0.weight"]
            return {"in_channels": int(w.shape[1]), "image_size": 0, "width": int(w.shape[0])}
        if name in ("resnet18", "resnet34", "resnet50"):
            w = state["net.conv1.weight"]
            return {"in_channels": int(w.shape[1]),
                    "image_size": 32 if int(w.shape[-1]) == 3 else 224, "width": 0}
        if name == "mlp":
            w = state["net.0.weight"]
            return {"in_channels": int(w.shape[1]), "image_size": 0, "width": int(w.shape[0])}
    except KeyError as exc:
        raise ConfigError(f"encoder weights do not match backbone {name!r}: no {exc}") from None
    raise ConfigError(f"backbone {name!r} is unknown")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def export_encoder(state: Mapping[str, Tensor], cfg: TrialConfig, folder: str | Path, *,
                   data: Any | None = None, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` (a backbone ``state_dict``, or a whole method's) and ``cfg`` to ``folder``.

    ``data`` (a :class:`~sslsearch.data.DataBundle`), when given, records the input kind, image
    size and normalisation. ``provenance`` (:func:`sslsearch.reporting.provenance.
    encoder_provenance`: ids, accuracies, the data set the trial reported) is stored as
    ``provenance``, with the method always and the data set's name, digest and split sizes
    computed from ``data`` where the trial's result did not carry them. Returns the folder.
    """
    if any(k.startswith("backbone.") for k in state):
        state = backbone_state(state)
    if not state:
        raise ConfigError("export_encoder: no backbone weights in the given state")
    build = _build_args(cfg.backbone, state)
    if data is not None:
        build["in_channels"] = int(data.in_channels)
        build["image_size"] = int(data.image_size)
    trial = _plain(dataclasses.asdict(cfg))
    origin = {"method": cfg.method, **dict(provenance or {})}
    if not origin.get("dataset") and data is not None:
        origin["dataset"] = dataset_record(data)
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "backbone": {"name": cfg.backbone, **build},
        "input": ({"kind": data.kind, "dataset": data.name, "num_classes": data.num_classes,
                   "mean": list(data.mean), "std": list(data.std),
                   "note": "images: uint8 / 255, then (x - mean) / std per channel; "
                           "tabular: the dataset's standardised rows"}
                  if data is not None else {"kind": "unknown", "dataset": cfg.dataset}),
        "trial": trial,
        "provenance": _plain(origin),
    }
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    # Own, contiguous CPU copies: safetensors refuses shared or strided storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    text = json.dumps(doc, indent=2, sort_keys=False)
    save_file(tensors, str(out / WEIGHTS), metadata={_META_KEY: text})
    (out / CONFIG).write_text(text + "\n")
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """The config of an export: its ``config.json``, else the weights file's header metadata."""
    weights = _weights_path(Path(path))
    beside = weights.parent / CONFIG
    if beside.is_file():
        doc: dict[str, Any] = json.loads(beside.read_text())
        return doc
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on a lying header
        raise ConfigError(f"{weights}: not a readable safetensors file ({_first_line(exc)})"
                          ) from None
    if _META_KEY not in meta:
        raise ConfigError(f"{weights}: no {CONFIG} beside it and no sslsearch config in its "
                          "header; was it written by sslsearch.reporting.export.export_encoder?")
    doc = json.loads(meta[_META_KEY])
    return doc


def _weights_path(path: Path) -> Path:
    path = path.expanduser()
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{path}: no such encoder export (expected a folder holding {WEIGHTS}, "
                          "or the file itself)")
    return path


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The exported backbone, built, loaded (strictly) and in eval mode, on ``device``.

    ``path``: an export folder or its ``encoder.safetensors``.
    """
    from safetensors.torch import load_file

    weights = _weights_path(Path(path))
    doc = read_config(weights)
    if doc.get("format") != FORMAT:
        raise ConfigError(f"{weights}: not an sslsearch encoder export "
                          f"(format {doc.get('format')!r})")
    spec = doc["backbone"]
    encoder = build_backbone(spec["name"], in_channels=int(spec["in_channels"]),
                             image_size=int(spec["image_size"]), width=int(spec["width"]))
    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as exc:  # a header that lies about offsets, shapes or dtypes
        raise ConfigError(f"{weights}: not a readable safetensors file ({_first_line(exc)})"
                          ) from None
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{weights}: its tensors do not fit the encoder its config describes "
                          f"({_first_line(exc)})") from None
    encoder.to(device)
    encoder.eval()
    return encoder


def torchvision_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ResNet export's weights keyed as torchvision's own ResNet names them (no ``net.``).

    sslsearch's ResNet is torchvision's with ``fc = Identity`` (and, below 33 px or for other
    than 3 channels, its stem swapped), so the weights load strictly into one built the same
    way; the features are the same (eval mode)::

        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Identity()
        if image_size <= 32:  # the CIFAR stem (config.json: backbone.image_size)
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:  # e.g. greyscale: a 1-channel 7×7 stem
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.load_state_dict(torchvision_state_dict(path), strict=True)

    ``path``: an export folder or its ``encoder.safetensors``. Other backbones are not
    torchvision models: refused.
    """
    from safetensors.torch import load_file

    weights = _weights_path(Path(path))
    name = read_config(weights).get("backbone", {}).get("name")
    if name not in ("resnet18", "resnet34", "resnet50"):
        raise ConfigError(f"{weights}: backbone {name!r} is not a torchvision model; "
                          "load it with sslsearch.load_encoder")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # a header that lies about offsets, shapes or dtypes
        raise ConfigError(f"{weights}: not a readable safetensors file ({_first_line(exc)})"
                          ) from None
    return {k.removeprefix("net."): v for k, v in tensors.items()}


def _try_data(cfg: TrialConfig) -> Any | None:
    """The trial's dataset on the CPU (for its normalisation), or None where it cannot be read
    here (e.g. a cluster whose data lives only on the workers): shapes then come from weights."""
    from sslsearch.trial.trial import load_data

    try:
        return load_data(cfg, torch.device("cpu"))
    except (ConfigError, OSError, RuntimeError):
        return None


def export_trial(config: Mapping[str, Any], checkpoint: Any, folder: str | Path, *,
                 provenance: Mapping[str, Any] | None = None, data: Any | None = None
                 ) -> Path | None:
    """Export the encoder of a finished trial: its suggested ``config`` (Ray's ``Result.config``)
    and its last ``checkpoint`` (anything with ``as_directory()``, e.g. Ray's ``Checkpoint``);
    ``provenance`` as :func:`export_encoder` takes it.

    Returns the export folder, or None when the trial left no readable checkpoint.
    """
    from sslsearch.search.space import trial_from_config
    from sslsearch.trial.checkpoint import load_checkpoint

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as where:
        state = load_checkpoint(Path(where))
    if state is None:
        return None
    cfg = trial_from_config(config)
    return export_encoder(state["model"], cfg, folder,
                          data=data if data is not None else _try_data(cfg),
                          provenance=provenance)
