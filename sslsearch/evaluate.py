"""Judge a trained encoder on another data set: transfer, few labels, beside the target's baselines.

    python -m sslsearch.evaluate sslsearch_results/<sweep>/best_encoder --dataset digits
    python -m sslsearch.evaluate resnet50.pth --dataset cifar10 --data-dir ~/data/cifar10
    python -m sslsearch.evaluate runs:/<mlflow run id> --dataset fashion_mnist

ENCODER is one of

- an sslsearch export (a folder holding ``encoder.safetensors``, or that file): its backbone,
  input size and normalisation come from its config (:mod:`sslsearch.reporting.export`);
- a torchvision-layout ResNet-18/34/50 state dict (``.pt``, ``.pth``, ``.safetensors``; e.g. the
  official VICReg or Barlow Twins ResNet-50), read with ``weights_only=True`` or safetensors, so a
  file carrying code is refused, never run (:mod:`sslsearch.reporting.foreign`); ImageNet's
  statistics normalise its input unless ``--normalize target``;
- an MLflow run, ``runs:/RUN_ID[/ARTIFACT_PATH]``: the first export among the run's artifacts,
  downloaded into this evaluation's folder.

The target data set's own splits judge it (:mod:`sslsearch.trial.transfer`): weighted kNN, the
converged linear probe, the few-label probes (k a class and 1 % / 10 %, mean ± sd over seeded
draws), each beside the target's standardised raw pixels and the same architecture at random
initialisation. The table prints; ``evaluation.json`` and ``evaluation.md`` go to
``<storage>/evaluations/<name>/`` and to an MLflow run of the ``sslsearch-evaluate`` experiment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sslsearch.cli import DEFAULT_STORAGE, positive_int
from sslsearch.data import DATASETS, load_dataset
from sslsearch.errors import ConfigError, OneLineParser, exit_code
from sslsearch.parts.networks import ResNet, build_backbone
from sslsearch.paths import results_folder
from sslsearch.reporting import export, foreign
from sslsearch.trial.fewlabel import DRAWS
from sslsearch.trial.transfer import Adaptation, Protocol, adaptation, markdown, transfer_table

EXPERIMENT = "sslsearch-evaluate"  # the MLflow experiment of evaluations
NORMALIZE = ("auto", "source", "target", "imagenet")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sslsearch.evaluate",
                      description="Evaluate a frozen encoder on a data set's own splits: kNN, "
                                  "linear probe and few-label probes, beside its raw pixels "
                                  "and a random-init encoder.")
    p.add_argument("encoder", help="an sslsearch export folder, a torchvision ResNet state dict "
                                   "(.pt/.pth/.safetensors) or runs:/RUN_ID[/PATH]")
    p.add_argument("--dataset", required=True, choices=DATASETS, metavar="NAME",
                   help="target data set: " + ", ".join(DATASETS))
    p.add_argument("--data-dir", help="its folder (default: the data set's own default)")
    p.add_argument("--max-train-samples", type=positive_int,
                   help="a stratified subset of the target's training split (default: all)")
    p.add_argument("--image-size", type=positive_int,
                   help="side the images are resized to (default: the encoder's training side)")
    p.add_argument("--normalize", choices=NORMALIZE, default="auto",
                   help="whose statistics normalise the input: auto = the export's source data, "
                        "ImageNet's for a 3-channel state dict, else the target's (default: auto)")
    p.add_argument("--seed", type=int, default=0,
                   help="validation split, random-init encoder and few-label draws (default: 0)")
    p.add_argument("--draws", type=positive_int, default=DRAWS,
                   help="seeded draws per few-label setting (default: %(default)s)")
    p.add_argument("--no-few-label", action="store_true", help="skip the few-label probes")
    p.add_argument("--knn-k", type=positive_int, default=Protocol.knn_k,
                   help="kNN neighbours (default: %(default)s)")
    p.add_argument("--name", help="this evaluation's folder under <storage>/evaluations "
                                  "(default: <encoder>-on-<dataset>)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="results folder (default: %(default)s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db here)")
    p.add_argument("--no-mlflow", action="store_true", help="write no MLflow run")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    return p


class Loaded:
    """An encoder ready to judge: the module, its random-init twin and how to feed both."""

    def __init__(self, encoder: torch.nn.Module, random_init: torch.nn.Module, *, channels: int,
                 size: int | None, stats: tuple[list[float], list[float]] | None,
                 source: str, describe: dict[str, Any]) -> None:
        self.encoder, self.random_init = encoder, random_init
        self.channels, self.size, self.stats, self.source = channels, size, stats, source
        self.describe = describe


def load(ref: str, folder: Path, args: argparse.Namespace) -> Loaded:
    """The encoder ``ref`` names (module docstring), its twin seeded with ``args.seed``."""
    if ref.startswith("runs:/"):
        from sslsearch.search.evaluation_runs import download_run_export

        ref = str(download_run_export(ref, _tracking_uri(args), folder / "encoder"))
    path = Path(ref).expanduser()
    if _is_export(path):
        doc = export.read_config(path)
        spec = doc["backbone"]
        torch.manual_seed(args.seed)
        twin = build_backbone(spec["name"], in_channels=int(spec["in_channels"]),
                              image_size=int(spec["image_size"]), width=int(spec["width"]))
        source = doc.get("input", {})
        stats = ((list(source["mean"]), list(source["std"])) if "mean" in source else None)
        return Loaded(export.load_encoder(path, args.device), twin.to(args.device),
                      channels=int(spec["in_channels"]), size=int(spec["image_size"]) or None,
                      stats=stats, source="source",
                      describe={"kind": "sslsearch export", "path": str(path), **spec,
                                "provenance": doc.get("provenance", doc.get("extra", {})),
                                "trained_on": source.get("dataset")})
    encoder, spec = foreign.load_torchvision_resnet(path)
    torch.manual_seed(args.seed)
    twin = ResNet(int(spec["backbone"][6:]), spec["in_channels"], spec["image_size"])
    stats = ((list(foreign.IMAGENET_MEAN), list(foreign.IMAGENET_STD))
             if spec["in_channels"] == 3 else None)
    return Loaded(encoder.to(args.device), twin.to(args.device), channels=spec["in_channels"],
                  size=spec["image_size"], stats=stats, source="imagenet",
                  describe={"kind": "torchvision state dict", "path": str(path), **spec})


def _is_export(path: Path) -> bool:
    """An sslsearch export: a folder with its weights, or a safetensors file carrying its config."""
    if path.is_dir():
        return True  # load_encoder names what is missing
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        export.read_config(path)
    except ConfigError:
        return False  # no sslsearch config: a torchvision-layout safetensors file
    return True


def feeding(loaded: Loaded, data: Any, args: argparse.Namespace) -> Adaptation:
    """How the target's images reach the encoder, per ``--normalize`` and ``--image-size``."""
    choice = args.normalize
    if choice == "auto":
        choice = loaded.source if loaded.stats is not None else "target"
    if choice == "imagenet":
        if loaded.channels != 3:
            raise ConfigError(f"--normalize imagenet: the encoder takes {loaded.channels} "
                              "channels, ImageNet's statistics are for 3")
        stats: tuple[Any, Any] | None = (foreign.IMAGENET_MEAN, foreign.IMAGENET_STD)
    elif choice == "source":
        if loaded.stats is None:
            raise ConfigError("--normalize source: this encoder records no source statistics")
        stats = loaded.stats
    else:
        stats = None
    return adaptation(data, channels=loaded.channels, size=args.image_size or loaded.size,
                      stats=stats, normalisation=choice)


def _tracking_uri(args: argparse.Namespace) -> str:
    from sslsearch.search.tracking_uri import normalize_uri

    return normalize_uri(args.tracking_uri)


def evaluate(args: argparse.Namespace) -> int:
    storage = Path(args.storage).expanduser().resolve()
    name = args.name or f"{_stem(args.encoder)}-on-{args.dataset}"
    folder = results_folder(name, storage / "evaluations")
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load(args.encoder, folder, args)
    data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                        max_train_samples=args.max_train_samples, device=args.device)
    adapt = feeding(loaded, data, args)
    protocol = Protocol(knn_k=args.knn_k, few_label=not args.no_few_label, draws=args.draws,
                        seed=args.seed)
    print(f"{args.encoder} on {data.name} ({len(data.train)} train, {len(data.val)} val, "
          f"{len(data.test)} test): {adapt.describe()}", flush=True)
    start = time.monotonic()
    rows = transfer_table(loaded.encoder, loaded.random_init, data, adapt, protocol)
    doc = {"encoder": loaded.describe, "dataset": _dataset(data, args),
           "adaptation": {**vars(adapt), "described": adapt.describe()},
           "protocol": vars(protocol), "seconds": round(time.monotonic() - start, 1),
           "rows": {r.name: r.metrics() for r in rows}}
    table = markdown(rows, title=f"{name}: {adapt.describe()}")
    (folder / "evaluation.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (folder / "evaluation.md").write_text(table)
    print(table + f"\nwritten: {folder}")
    if not args.no_mlflow:
        from sslsearch.search.evaluation_runs import log_evaluation

        run = log_evaluation(_tracking_uri(args), EXPERIMENT, name, doc, folder)
        print(f"MLflow run {run} (experiment {EXPERIMENT})")
    return 0


def _stem(ref: str) -> str:
    """A folder name for ``ref``: the run id (and artifact path) of a run, else the file's or
    folder's own name."""
    if ref.startswith("runs:/"):
        return ref.removeprefix("runs:/").strip("/").replace("/", "-") or "run"
    return Path(ref.rstrip("/")).stem or "encoder"


def _dataset(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": data.name, "data_dir": args.data_dir, "num_classes": data.num_classes,
            "train": len(data.train), "val": len(data.val), "test": len(data.test),
            "channels": data.in_channels, "image_size": data.image_size}


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: evaluate(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
