"""Encoder export: safetensors weights + config, loaded back by ``sslsearch.load_encoder``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sslsearch
from sslsearch.config import load_experiment
from sslsearch.errors import ConfigError
from sslsearch.reporting.export import CONFIG, WEIGHTS, export_encoder, read_config
from sslsearch.train import run
from sslsearch.trial.checkpoint import load_checkpoint
from sslsearch.trial.trial import build_method, load_data, select_device


def _trained(tmp_path: Path, backbone: str = "small_cnn", dataset: str = "digits"
             ) -> tuple[torch.nn.Module, object, object, dict[str, torch.Tensor]]:
    exp = load_experiment("quick")
    cfg = dataclasses.replace(exp.trial, epochs=1, probe=False, device="cpu", backbone=backbone,
                              dataset=dataset, method="simclr", method_params={})
    run(cfg, checkpoint_dir=tmp_path / "ckpt")
    state = load_checkpoint(tmp_path / "ckpt")
    assert state is not None
    data = load_data(cfg, select_device("cpu"))
    method = build_method(cfg, data)
    method.load_state_dict(state["model"])
    method.eval()
    return method.backbone, cfg, data, state["model"]


def _features(encoder: torch.nn.Module, data: object) -> torch.Tensor:
    from sslsearch.trial.augment import normalize

    x, _ = next(data.test.iter_batches(len(data.test), None, shuffle=False,  # type: ignore[attr-defined]
                                        drop_last=False))
    if data.kind == "image":  # type: ignore[attr-defined]
        x = normalize(x, data.mean, data.std)  # type: ignore[attr-defined]
    with torch.inference_mode():
        return encoder(x)


def test_load_encoder_round_trips(tmp_path: Path) -> None:
    trained, cfg, data, model_state = _trained(tmp_path)
    out = export_encoder(model_state, cfg, tmp_path / "export", data=data,  # type: ignore[arg-type]
                         provenance={"trial_id": "t1"})
    assert (out / WEIGHTS).stat().st_size > 0 and (out / CONFIG).is_file()
    doc = json.loads((out / CONFIG).read_text())
    assert doc["trial"]["method"] == "simclr" and doc["backbone"]["name"] == "small_cnn"
    assert doc["input"]["mean"] == list(data.mean)  # type: ignore[attr-defined]

    loaded = sslsearch.load_encoder(out)
    assert not loaded.training
    assert torch.equal(_features(loaded, data), _features(trained, data))
    # The weights file alone is enough: its header carries the config.
    (out / CONFIG).unlink()
    assert read_config(out / WEIGHTS)["trial"]["method"] == "simclr"
    alone = sslsearch.load_encoder(out / WEIGHTS)
    assert torch.equal(_features(alone, data), _features(trained, data))


def test_load_encoder_tabular_mlp(tmp_path: Path) -> None:
    trained, cfg, data, model_state = _trained(tmp_path, backbone="mlp",
                                               dataset="digits_tabular")
    out = export_encoder(model_state, cfg, tmp_path / "export")  # type: ignore[arg-type]
    loaded = sslsearch.load_encoder(out)
    assert torch.equal(_features(loaded, data), _features(trained, data))


def test_load_encoder_refuses_a_missing_export(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such encoder export"):
        sslsearch.load_encoder(tmp_path / "nothing")


def test_import_sslsearch_stays_light() -> None:
    code = ("import sys, sslsearch\n"
            "assert callable(sslsearch.load_encoder)\n"
            "print(','.join(m for m in ('ray', 'optuna', 'mlflow', 'safetensors', 'torch')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("image_size", [32, 64])
def test_resnet_export_rebuilds_the_right_stem_from_weights_alone(tmp_path: Path,
                                                                   image_size: int) -> None:
    """Without the dataset at hand, the ResNet stem (CIFAR 3×3 or ImageNet 7×7) is read off the
    weights, and the rebuilt encoder computes the same features."""
    from sslsearch.parts.networks import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet18", in_channels=3, image_size=image_size).eval()
    cfg = dataclasses.replace(load_experiment("quick").trial, backbone="resnet18")
    out = export_encoder(net.state_dict(), cfg, tmp_path / "export")
    loaded = sslsearch.load_encoder(out)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))


def _torchvision_resnet18(in_channels: int, image_size: int) -> torch.nn.Module:
    """torchvision's resnet18 built as ``torchvision_state_dict``'s docstring (and the README)
    says: the recipe under test, line for line."""
    import torchvision
    from torch import nn

    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    if image_size <= 32:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


@pytest.mark.parametrize(("in_channels", "image_size"), [(3, 32), (1, 32), (1, 40)])
def test_a_resnet_export_loads_strictly_into_torchvision(tmp_path: Path, in_channels: int,
                                                         image_size: int) -> None:
    """The export travels: its weights, keyed by ``torchvision_state_dict``, load with
    strict=True into torchvision's own resnet18 (CIFAR stem, 1-channel stems) and give the
    features sslsearch's encoder gives."""
    from sslsearch.parts.networks import build_backbone
    from sslsearch.reporting.export import torchvision_state_dict

    torch.manual_seed(0)
    net = build_backbone("resnet18", in_channels=in_channels, image_size=image_size)
    cfg = dataclasses.replace(load_experiment("quick").trial, backbone="resnet18")
    out = export_encoder(net.state_dict(), cfg, tmp_path / "export")
    theirs = _torchvision_resnet18(in_channels, image_size)
    theirs.load_state_dict(torchvision_state_dict(out), strict=True)
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.inference_mode():
        assert torch.allclose(theirs.eval()(x), net.eval()(x))


def test_torchvision_state_dict_refuses_a_backbone_torchvision_lacks(tmp_path: Path) -> None:
    from sslsearch.parts.networks import build_backbone
    from sslsearch.reporting.export import torchvision_state_dict

    net = build_backbone("small_cnn", in_channels=1, image_size=8)
    out = export_encoder(net.state_dict(), load_experiment("quick").trial, tmp_path / "export")
    with pytest.raises(ConfigError, match="not a torchvision model"):
        torchvision_state_dict(out)


def test_export_trial_records_where_the_encoder_came_from(tmp_path: Path) -> None:
    """The ``provenance`` block: method, data set name, digest and split sizes (from the trial's
    result, or computed from the data when the result has none: the same digest), sweep and
    trial ids, the accuracy it was chosen on and its baselines."""
    from sslsearch.data import load_dataset
    from sslsearch.data.digest import dataset_digest, dataset_result
    from sslsearch.reporting.export import export_trial
    from sslsearch.reporting.provenance import encoder_provenance
    from sslsearch.results import FolderCheckpoint, TrialRecord
    from sslsearch.search.confirm import choose
    from sslsearch.trial.checkpoint import save_checkpoint

    cfg = dataclasses.replace(load_experiment("quick").trial, method="simclr", method_params={})
    data = load_data(cfg, select_device("cpu"))
    save_checkpoint(tmp_path / "ckpt", {"model": build_method(cfg, data).state_dict()})
    fresh = load_dataset("digits", seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                         max_train_samples=cfg.max_train_samples)  # no shared, cached digest
    expected = {"name": "digits", "digest": dataset_digest(fresh),
                "splits": {"train": len(fresh.train), "val": len(fresh.val),
                           "test": len(fresh.test)}}
    for carried in (dataset_result(data), {}):
        metrics = {"epoch": 1.0, "val_knn_acc": 0.75, "probe_val_acc": 0.8,
                   "probe_test_acc": 0.79, "raw_knn_acc": 0.7, "raw_probe_test_acc": 0.72,
                   "init_knn_acc": 0.5, **carried}
        config = {"_base": dataclasses.asdict(cfg), "method": "simclr"}
        run = TrialRecord("simclr", "t1", "search", {}, config, "finished", [1.0], [0.75], 1.0,
                          metrics, FolderCheckpoint(str(tmp_path / "ckpt")), seed=0)
        choice = choose([run], "val_knn_acc", "max")
        assert choice is not None
        out = export_trial(choice.config, choice.run.checkpoint, tmp_path / "export",
                           provenance=encoder_provenance(choice, "sweep-1", "val_knn_acc"))
        assert out is not None
        doc = read_config(out)
        origin = doc["provenance"]
        assert origin["dataset"] == expected, carried
        assert (origin["method"], origin["sweep_id"], origin["trial_id"]) == (
            "simclr", "sweep-1", "t1")
        assert origin["accuracy"] == {"metric": "val_knn_acc", "value": 0.75, "confirmed": False,
                                      "val_knn_acc": 0.75, "probe_val_acc": 0.8,
                                      "probe_test_acc": 0.79}
        assert origin["baselines"] == {"raw_knn_acc": 0.7, "raw_probe_test_acc": 0.72,
                                       "init_knn_acc": 0.5}
        assert doc["trial"]["method"] == "simclr"  # the full configuration
