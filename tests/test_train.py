"""The pretrain-then-probe loop: resume is exact, reports every epoch, learns, fails clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslsearch.config import trial_config
from sslsearch.data import load_dataset
from sslsearch.errors import ConfigError, TrialFailure
from sslsearch.methods.base import Step
from sslsearch.train import main, run
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint
from sslsearch.trial.trial import (
    cpu_has_native_bf16,
    setup_trial,
    train_step,
    trial_optimizer,
    uses_bf16,
)

TINY = {"backbone_width": 8, "batch_size": 64, "epochs": 3, "device": "cpu", "knn_k": 10,
        "probe_max_iter": 20, "crop_min_scale": 0.5}


def test_reports_every_epoch_with_probe_at_the_end(tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []
    cfg = trial_config({**TINY, "method": "simclr"})
    final = run(cfg, report=lambda m, folder: seen.append(m), checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in seen] == [1.0, 2.0, 3.0]
    for key in ("train_loss", "lr", "val_knn_acc", "embed_std_ratio", "effective_rank",
                "alignment", "uniformity", "images_per_second"):
        assert all(key in m for m in seen), key
    assert "probe_val_acc" not in seen[0] and "probe_test_acc" in seen[-1]
    assert not any(k.startswith("few_label") for k in seen[-1])  # only with few_label: true
    assert final == seen[-1]
    assert 0.0 <= final["probe_test_acc"] <= 1.0
    assert (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.parametrize("precision,conv_dtype", [
    ("auto", torch.bfloat16 if cpu_has_native_bf16() else torch.float32),
    ("fp32", torch.float32),
    ("bf16", torch.bfloat16)])
def test_precision_on_cpu(precision: str, conv_dtype: torch.dtype) -> None:
    # bf16 autocast on the CPU: the convolutions compute in bf16, the weights stay float32, and
    # training still learns something finite; fp32 keeps the CPU in float32, auto does on CPUs
    # without native bf16.
    cfg = trial_config({**TINY, "method": "simclr", "precision": precision, "probe": False})
    data = load_dataset("digits")
    trial = setup_trial(cfg, data, torch.device("cpu"))
    seen: list[torch.dtype] = []
    conv = next(m for m in trial.method.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    opt = trial_optimizer(trial, 32)
    x = data.train.x[:32].float().div(255)
    out = train_step(trial, opt, x, x.flip(-1), data.train.y[:32], Step(0, 10, 0, 10))
    assert seen and set(seen) == {conv_dtype}
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trial.method.parameters())
    if precision == "bf16":
        final = run(cfg, data=data)
        assert 0.5 < final["val_knn_acc"] <= 1.0


@pytest.mark.parametrize("native", [True, False])
def test_precision_rule(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # One rule (trial.uses_bf16): auto autocasts on CUDA always and on the CPU only where bf16 is
    # native (emulated bf16 is slower than float32); bf16 and fp32 mean what they say anywhere.
    monkeypatch.setattr("sslsearch.trial.trial.cpu_has_native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16("auto", cpu) is native
    assert uses_bf16("auto", cuda) is True
    assert uses_bf16("bf16", cpu) is True and uses_bf16("bf16", cuda) is True
    assert uses_bf16("fp32", cpu) is False and uses_bf16("fp32", cuda) is False


@pytest.mark.parametrize("method", ["simclr", "vicreg"])
def test_resume_is_bit_for_bit(method: str, tmp_path: Path) -> None:
    # Narrow heads: the resume logic is what is tested, not the default 2048-wide expander.
    params = {"expander_dims": [128, 128]} if method == "vicreg" else {"proj_hidden_dim": 128}
    cfg = trial_config({**TINY, "method": method, "method_params": params, "probe": False})
    data = load_dataset("digits")
    straight = run(cfg, checkpoint_dir=tmp_path / "a", data=data)
    # Interrupted after epoch 2 (as a killed process would be), then resumed from its checkpoint.
    epochs_seen: list[float] = []
    run(cfg, report=lambda m, _: epochs_seen.append(m["epoch"]),
        checkpoint_dir=tmp_path / "b", data=data, stop=lambda: len(epochs_seen) == 2)
    assert epochs_seen == [1.0, 2.0]
    resumed = run(cfg, report=lambda m, _: epochs_seen.append(m["epoch"]),
                  checkpoint_dir=tmp_path / "b", data=data)
    assert epochs_seen == [1.0, 2.0, 3.0]  # only the missing epoch ran
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a is not None and b is not None
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert straight == {**resumed, "epoch_seconds": straight["epoch_seconds"],
                        "images_per_second": straight["images_per_second"]}


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"epoch": 1})
    save_checkpoint(tmp_path, {"epoch": 2})
    (tmp_path / "checkpoint.pt").write_bytes(b"torn write")
    state = load_checkpoint(tmp_path)
    assert state is not None and state["epoch"] == 1


def test_non_finite_loss_is_a_trial_failure() -> None:
    cfg = trial_config({**TINY, "method": "vicreg", "base_lr": 1e6, "optimizer": "sgd",
                        "method_params": {"expander_dims": [64, 64]},
                        "check_finite_every": 1, "warmup_epochs": 0})
    with pytest.raises(TrialFailure) as info:
        run(cfg)
    assert info.value.reason == "nan_loss"


@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "cifar11"], "dataset 'cifar11' is unknown"),
    (["--method", "simclr9"], "method 'simclr9' is unknown; choose one of"),
    (["--set", "batch_sise=3"], "unknown key trial.batch_sise; valid keys"),
    (["--set", "batch_size=many"], "trial.batch_size must be int, found 'many'"),
    (["--set", "method_params.tau=0.1"], "unknown key method_params[simclr].tau"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/x"], "/nonexistent/x"),
    (["--experiment", "nope"], "experiment file 'nope' not found"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--method", "simclr", "--epochs", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_prints_one_line_per_epoch() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sslsearch.train", "--experiment", "quick", "--method", "vicreg",
         "--epochs", "2", "--set", "backbone_width=8", "--set", "probe_max_iter=10"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("epoch   1") and lines[2].startswith("epoch   2")
    assert "probe val" in lines[2]


def test_unknown_method_param_type_is_config_error() -> None:
    with pytest.raises(ConfigError, match="temperature must be float"):
        trial_config({"method": "simclr", "method_params": {"temperature": "hot"}})


def test_host_memory_limit_is_an_oom_failure() -> None:
    cfg = trial_config({**TINY, "method": "simclr", "max_host_memory_gb": 0.01})
    with pytest.raises(TrialFailure) as info:
        run(cfg)
    assert info.value.reason == "oom" and "max_host_memory_gb" in str(info.value)
