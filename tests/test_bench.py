"""The throughput benchmark runs end to end and rejects bad flags (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sslsearch.bench import BenchConfig, conventional_transform, run_packing
from sslsearch.bench.__main__ import main
from sslsearch.bench.timing import summary as _summary
from sslsearch.trial.augment import AugmentConfig
from sslsearch.trial.trial import uses_bf16

# One intra-op thread: on a loaded 2-core machine two OpenMP threads spin against each other and a
# step takes ten times longer.
TINY = ["--dataset", "digits", "--backbone", "small_cnn", "--batch-size", "32", "--device", "cpu",
        "--rounds", "1", "--window", "2", "--warmup", "1", "--workers", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    """``main`` sets torch's thread count for the process: put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smoke_both_paths_measured_and_written_as_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main([*TINY, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ours" in table and "conventional" in table and "ratio ours/conventional" in table
    r = json.loads(out.read_text())
    # One worker queues 2 batches: the conventional window is at least twice that long.
    assert r["ours"]["steps"] == 2 and r["conventional"]["steps"] == 4
    for path in ("ours", "conventional"):
        assert r[path]["images_per_s_median"] > 0 and r[path]["images_per_s_best"] > 0
        assert r[path]["min_step_s"] <= r[path]["median_step_s"]
    assert r["ratio_median"] == pytest.approx(
        r["ours"]["images_per_s_median"] / r["conventional"]["images_per_s_median"])
    assert r["ratio_best"] > 0
    assert r["ours"]["cpu_s_per_step"] > 0
    if sys.platform == "linux":  # worker CPU time comes from /proc
        assert r["conventional"]["workers_cpu_s_per_step"] > 0 and r["ratio_cpu"] > 0
    shares = r["breakdown"]
    assert shares["augment_s"] > 0 and shares["model_s"] > 0
    assert shares["augment_share"] + shares["model_share"] + shares["loss_share"] == (
        pytest.approx(1.0))
    assert r["compute"]["gflop_per_image"] > 0 and r["compute"]["achieved_tflops"] > 0
    assert r["compute"]["fraction_of_bound"] is None  # CPU: no peak known unless given


@pytest.mark.parametrize("flag,ours,conventional", [
    ("library", "cpu-native", "fp32"),  # the libraries' CPU default: no autocast
    ("same", "cpu-native", "cpu-native"),
    ("bf16", "cpu-native", "bf16"),
])
def test_precision_of_each_path_is_reported(flag: str, ours: str, conventional: str,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    native = "bf16" if uses_bf16("auto", torch.device("cpu")) else "fp32"
    want = {k: native if v == "cpu-native" else v
            for k, v in (("ours", ours), ("conventional", conventional))}
    out = tmp_path / "bench.json"
    assert main([*TINY, "--conventional-precision", flag, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["autocast"] == want
    assert (f"precision: ours {want['ours']} (auto), conventional {want['conventional']} ({flag})"
            in capsys.readouterr().out)


def test_throughput_is_per_window_not_per_single_step() -> None:
    # A loader with 4 workers delivers in bursts: one step waits 0.37 s for the next 4 batches,
    # the other 3 find theirs ready (0.01 s, the model). The median single step (0.01 s) would
    # claim 100 batches/s; the loader gives 4 per 0.4 s = 10 per second.
    burst = [0.37, 0.01, 0.01, 0.01]
    r = _summary([burst * 2, [0.5, 0.01, 0.01, 0.01] * 2], batch=100)
    assert r["single_step_median_s"] == pytest.approx(0.01)
    assert r["min_step_s"] == pytest.approx(0.1) and r["images_per_s_best"] == pytest.approx(1000)
    assert r["median_step_s"] == pytest.approx((0.1 + 0.1325) / 2)
    assert r["steps"] == 16 and r["windows"] == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_conventional_transform_gives_normalised_views(channels: int) -> None:
    from torchvision.transforms.v2.functional import to_pil_image

    mean, std = [0.5] * channels, [0.25] * channels
    t = conventional_transform(AugmentConfig.for_image_size(16, solarize_p=0.5), 16, channels,
                               mean, std)
    img = to_pil_image(torch.randint(0, 256, (16, 16, channels), dtype=torch.uint8).numpy())
    v = t(img)
    assert v.shape == (channels, 16, 16) and v.dtype == torch.float32
    assert v.min() >= -2.0 - 1e-6 and v.max() <= 2.0 + 1e-6  # (0 - .5)/.25 .. (1 - .5)/.25


@pytest.mark.parametrize("argv", [
    ["--batch-size", "1"],
    ["--rounds", "0"],
    ["--backbone", "vgg"],
    ["--dataset", "imagenet"],
    ["--method", "nope"],
    ["--window", "ten"],
    ["--no-such-flag"],
    ["--channels", "2"],
    ["--conventional-precision", "fp16"],
])
def test_bad_flags_exit_2_with_one_line(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err


def test_tabular_dataset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", "digits_tabular", "--device", "cpu"]) == 2
    assert "images" in capsys.readouterr().err


def test_command_line_exit_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "sslsearch.bench", "--batch-size", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --batch-size 0")


@pytest.mark.slow
def test_packing_reports_every_trial() -> None:
    bc = BenchConfig(dataset="digits", batch_size=32, device="cpu", warmup=1, window=2,
                     trials=2, duration=1.0, threads=1)
    r = run_packing(bc)
    assert len(r["packed"]) == 2 and all(x["images_per_s"] > 0 for x in r["packed"])
    assert r["single_before"]["images_per_s"] > 0 and r["single_after"]["images_per_s"] > 0
    assert r["gain"] == pytest.approx(r["aggregate_images_per_s"] / r["single_images_per_s"])
