"""``python -m sslsearch.evaluate``: an encoder judged on another data set (issue 34, transfer).

End to end on digits (1 channel, 8 px) with encoders trained for other inputs, so every path of
the adaptation runs: a torchvision ResNet-18 state dict saved here (3 channels, CIFAR stem), an
sslsearch export (small CNN, 28 px), and the same export fetched from an MLflow run. Bad encoder
files exit 2 with one line and run no code.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from sslsearch.config import TrialConfig
from sslsearch.data import load_dataset
from sslsearch.evaluate import main
from sslsearch.parts.networks import build_backbone
from sslsearch.reporting.export import export_encoder
from sslsearch.reporting.foreign import load_torchvision_resnet, resnet_spec, torchvision_keys
from sslsearch.trial.transfer import LUMA, Adaptation, adaptation

FAST = ["--max-train-samples", "300", "--draws", "2", "--knn-k", "20"]


def _cifar_resnet18() -> nn.Module:
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def test_torchvision_state_dict_loads_and_gives_torchvision_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _cifar_resnet18().eval()
    # As a training library saves it: wrapped (DDP's module.), nested, classifier still there.
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               tmp_path / "r18.pth")
    encoder, spec = load_torchvision_resnet(tmp_path / "r18.pth")
    assert spec == {"backbone": "resnet18", "in_channels": 3, "image_size": 32}
    net.fc = nn.Identity()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(encoder(x), net(x), atol=1e-5)


def test_depth_is_read_off_the_blocks() -> None:
    for ctor, depth in ((torchvision.models.resnet34, 34), (torchvision.models.resnet50, 50)):
        state = torchvision_keys(ctor(weights=None).state_dict())
        assert resnet_spec(state, Path("x"))[0] == depth
        assert not any(k.startswith("fc.") for k in state)


def test_channel_and_size_adaptation() -> None:
    data = load_dataset("digits", max_train_samples=50)
    adapt = adaptation(data, channels=3, size=16, stats=((0.0,) * 3, (1.0,) * 3),
                       normalisation="imagenet")
    x = data.train.x[:4]
    out = adapt(x)
    assert out.shape == (4, 3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 2])  # one channel repeated
    assert "channels 1 → 3" in adapt.describe() and "resized 8 → 16" in adapt.describe()
    rgb = torch.tensor([[[[10]], [[200]], [[40]]]], dtype=torch.uint8)
    gray = Adaptation(3, 1, 1, 1, (0.0,), (1.0,), "target")  # RGB → luma, no resize
    expected = sum(w * v for w, v in zip(LUMA, (10, 200, 40), strict=True)) / 255
    assert gray(rgb).item() == pytest.approx(round(expected * 255) / 255, abs=1e-6)


def test_torchvision_checkpoint_evaluates_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(5)  # not --seed's 0, which draws the random-init twin
    torch.save(_cifar_resnet18().state_dict(), tmp_path / "r18.pth")
    code = main([str(tmp_path / "r18.pth"), "--dataset", "digits", "--image-size", "8",
                 "--storage", str(tmp_path / "res"), "--no-mlflow", *FAST])
    assert code == 0
    doc = json.loads((tmp_path / "res/evaluations/r18-on-digits/evaluation.json").read_text())
    assert set(doc["rows"]) == {"encoder", "random_init", "raw_pixels"}
    assert doc["adaptation"]["normalisation"] == "imagenet"
    assert "channels 1 → 3" in doc["adaptation"]["described"]
    assert doc["rows"]["encoder"] != doc["rows"]["random_init"]
    raw = doc["rows"]["raw_pixels"]
    assert raw["probe_test_acc"] > 0.85 and raw["few_label_5_per_class_test_acc"] > 0.5
    assert doc["dataset"]["train"] == 300


def _export(folder: Path) -> Path:
    """A random-init small CNN exported as if trained on 28 px Fashion-MNIST."""
    torch.manual_seed(1)
    cfg = TrialConfig(dataset="fashion_mnist_small", backbone="small_cnn", backbone_width=8)
    backbone = build_backbone("small_cnn", in_channels=1, image_size=28, width=8)
    data = load_dataset("fashion_mnist_small", max_train_samples=100)
    return export_encoder(backbone.state_dict(), cfg, folder, data=data)


def test_export_and_mlflow_run_evaluate_and_record(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = _export(tmp_path / "export")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([str(out), "--dataset", "digits", "--storage", str(tmp_path / "res"),
                 "--tracking-uri", uri, "--name", "direct", *FAST]) == 0
    doc = json.loads((tmp_path / "res/evaluations/direct/evaluation.json").read_text())
    assert doc["adaptation"]["size_to"] == 28 and doc["adaptation"]["normalisation"] == "source"
    assert doc["encoder"]["trained_on"] == "fashion_mnist_small"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sslsearch-evaluate")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["encoder.probe_test_acc"] == doc["rows"]["encoder"]["probe_test_acc"]
    assert run.data.params["dataset.name"] == "digits"
    # The same export as a run's artifact, fetched by its runs:/ URI.
    holder = client.create_run(exp.experiment_id)
    client.log_artifacts(holder.info.run_id, str(out), "model")
    assert main([f"runs:/{holder.info.run_id}", "--dataset", "digits", "--storage",
                 str(tmp_path / "res"), "--tracking-uri", uri, "--name", "fetched",
                 *FAST]) == 0
    again = json.loads((tmp_path / "res/evaluations/fetched/evaluation.json").read_text())
    assert again["rows"] == doc["rows"]


class _Payload:
    """Unpickling this would create a file: the proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sslsearch.evaluate", *args, "--dataset",
                           "digits", "--no-mlflow", "--storage", str(cwd)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_encoder_files_exit_2_with_one_line_and_run_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"conv1.weight": _Payload(marker)}, fh)
    good = tmp_path / "export"
    _export(good)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((good / "encoder.safetensors").read_bytes()[:300])
    torch.save(nn.Sequential(nn.Linear(3, 4)).state_dict(), tmp_path / "mlp.pt")
    wrong = torchvision.models.resnet18(weights=None).state_dict()
    wrong["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pt")
    for name, says in (("evil.pt", "weights-only"), ("cut.safetensors", "safetensors"),
                       ("mlp.pt", "not a torchvision ResNet"), ("wrong.pt", "do not fit"),
                       ("missing.pt", "no such file")):
        proc = _run([str(tmp_path / name)], tmp_path)
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and says in lines[0], (name, lines)
    assert not marker.exists()
