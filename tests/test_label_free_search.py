"""Issue 17: searching without labels. The label-free metrics are logged every epoch, may rank a
sweep's trials, an ImageFolder without class folders runs a sweep end to end, and every labeled
sweep reports how well the metrics agree with the labels (Spearman's ρ)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from sslsearch.config import (
    LABEL_FREE_METRICS,
    LABEL_FREE_OBJECTIVES,
    SEARCH_METRICS,
    trial_config,
)
from sslsearch.data import load_dataset
from sslsearch.reporting.summary import correlation_markdown, spearman
from sslsearch.search.tracking import TAG_ROLE
from sslsearch.train import run
from sslsearch.trial import labelfree

TINY = {"dataset": "digits", "backbone": "small_cnn", "backbone_width": 8, "epochs": 1,
        "batch_size": 128, "device": "cpu", "knn_k": 10, "probe": False, "crop_min_scale": 0.5}


def test_spearman_by_hand() -> None:
    # ranks (1, 2, 3, 4) against (1, 3, 2, 4): Σd² = 2, ρ = 1 − 6·2 / (4·15) = 0.8
    rho, n = spearman([0.1, 0.2, 0.3, 0.4], [10, 30, 20, 40])
    assert n == 4 and rho == pytest.approx(0.8)
    # ties share their average rank: x ranks (1.5, 1.5, 3), y (1, 2, 3): ρ = Pearson of ranks
    rho, _ = spearman([1, 1, 2], [5, 6, 7])
    assert rho == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert spearman([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
    # fewer than 3 finite pairs, or a constant side: no ρ
    assert spearman([1, 2, None, float("nan")], [1, 2, 3, 4]) == (None, 2)
    assert spearman([1, 2, 3], [5, 5, 5])[0] is None


def test_the_names_agree_with_the_metrics_module() -> None:
    objectives = {m.objective_key for m in labelfree.METRICS.values()}
    assert set(LABEL_FREE_OBJECTIVES) == objectives
    assert objectives <= set(LABEL_FREE_METRICS) and objectives <= set(SEARCH_METRICS)
    assert all(SEARCH_METRICS[k] == "max" for k in objectives)


def test_correlations_per_method_and_across() -> None:
    trials = [("simclr", {"rankme": r, "lidar": 5 - r, "val_knn_acc": acc, "probe_val_acc": acc})
              for r, acc in ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8), (5, 0.9))]
    trials += [("vicreg", {"rankme": 9, "val_knn_acc": 0.1}), ("vicreg", {"rankme": 8})]
    md = correlation_markdown(trials)
    simclr = next(line for line in md.splitlines() if line.startswith("| simclr"))
    cells = [c.strip() for c in simclr.strip("|").split("|")]
    # rankme vs val kNN, rankme vs probe val, lidar vs val kNN, lidar vs probe val, then α-ReQ
    assert cells[:2] == ["simclr", "5"]
    assert cells[2:6] == ["+1.00 (5)", "+1.00 (5)", "-1.00 (5)", "-1.00 (5)"]
    assert cells[6:] == ["too few trials (0)", "too few trials (0)"]
    # 2 vicreg trials, 1 pair: no ρ is printed from so few
    vicreg = next(line for line in md.splitlines() if line.startswith("| vicreg"))
    assert "too few trials (1)" in vicreg and "+" not in vicreg
    assert "| all methods | 7 |" in md
    assert correlation_markdown([("simclr", {"val_knn_acc": 0.5})]) == ""


def test_every_epoch_reports_the_label_free_metrics_without_changing_training() -> None:
    on = run(trial_config({**TINY, "method": "simclr"}))
    for key in ("rankme", "lidar", "alpha_req", "alpha_req_score"):
        assert np.isfinite(on[key]), key
    assert 1.0 <= on["rankme"] <= 32 * 4  # width 8: 32 channels on a 2x2 grid of digits
    off = run(trial_config({**TINY, "method": "simclr", "label_free": False}))
    assert "rankme" not in off
    # The metrics draw their views from their own generator: training is the same either way.
    assert on["train_loss"] == off["train_loss"] and on["val_knn_acc"] == off["val_knn_acc"]


def test_labels_false_skips_knn_probe_and_baselines() -> None:
    last = run(trial_config({**TINY, "method": "vicreg", "labels": False}))
    assert "rankme" in last and "lidar" in last
    for key in ("val_knn_acc", "probe_val_acc", "test_knn_acc", "init_knn_acc", "raw_knn_acc"):
        assert key not in last, key


def write_unlabeled_folder(root: Path, n: int = 40) -> None:
    """n 20 x 20 PNGs right in ``root``, no class folders: blobs of random colour and place."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        pixels = np.zeros((20, 20, 3), np.uint8)
        y, x = rng.integers(0, 12, size=2)
        pixels[y:y + 8, x:x + 8] = rng.integers(40, 255, size=3)
        Image.fromarray(pixels).save(root / f"img_{i:03d}.png")


def test_an_image_folder_without_class_folders_is_unlabeled(tmp_path: Path) -> None:
    write_unlabeled_folder(tmp_path / "photos")
    bundle = load_dataset("imagefolder", data_dir=tmp_path / "photos", image_size=16,
                          val_fraction=0.25)
    assert not bundle.labeled and bundle.num_classes == 1
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 0)
    assert bundle.train.x.shape[1:] == (3, 16, 16) and bundle.train.x.dtype == torch.uint8


def _experiment(tmp_path: Path, metric: str) -> Path:
    path = tmp_path / f"unlabeled_{metric}.yaml"
    path.write_text(yaml.safe_dump({
        "description": "unlabeled image folder",
        "trial": {"dataset": "imagefolder", "data_dir": str(tmp_path / "photos"),
                  "image_size": 16, "backbone": "small_cnn", "backbone_width": 4,
                  "epochs": 2, "batch_size": 16, "device": "cpu", "label_free_samples": 16},
        "search": {"num_samples": 2, "max_concurrent": 1, "metric": metric, "grace_period": 2}}))
    return path


def test_an_unlabeled_sweep_ranks_by_a_label_free_metric_end_to_end(tmp_path: Path) -> None:
    write_unlabeled_folder(tmp_path / "photos")
    out = subprocess.run(
        [sys.executable, "-m", "sslsearch.run", "--space", "simclr", "--experiment",
         str(_experiment(tmp_path, "lidar")), "--name", "nolabels", "--storage", "results",
         "--quiet", "--confirm-top", "1", "--confirm-seeds", "2"], cwd=tmp_path,
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "results" / "nolabels" / "summary.md").read_text()
    assert "Trials ranked by `lidar` (maximised)" in summary and "no labels" in summary
    # Confirmed on the label-free metric too: the best trial (and the defaults, unless it is
    # them) on two fresh seeds, the winner chosen on its mean lidar.
    assert "## Confirmed on fresh seeds 1, 2" in summary and "winner #1" in summary
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sslsearch")
    assert exp is not None
    children = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get(TAG_ROLE) == "trial"]
    confirm = [c for c in children if c.data.tags["sslsearch.stage"] == "confirm"]
    children = [c for c in children if c.data.tags["sslsearch.stage"] == "search"]
    assert len(children) == 2 and len(confirm) in (2, 4)
    assert {c.data.tags["sslsearch.seed"] for c in confirm} == {"1", "2"}
    for child in children:
        logged = set(child.data.metrics)
        assert {"lidar", "rankme", "alpha_req_score", "train_loss"} <= logged
        assert not {k for k in logged if "knn" in k or "probe" in k or k.startswith("raw_")}
        assert len(client.get_metric_history(child.info.run_id, "lidar")) == 2  # every epoch


def test_an_unlabeled_folder_with_a_labeled_metric_exits_2_before_any_trial(
        tmp_path: Path) -> None:
    write_unlabeled_folder(tmp_path / "photos")
    out = subprocess.run(
        [sys.executable, "-m", "sslsearch.run", "--space", "simclr", "--experiment",
         str(_experiment(tmp_path, "val_knn_acc"))], cwd=tmp_path, capture_output=True,
        text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "search.metric val_knn_acc needs labels" in lines[0], out.stderr
    assert "photos" in lines[0] and not (tmp_path / "mlflow.db").exists()


def test_labels_false_needs_a_label_free_metric() -> None:
    from sslsearch.config import SearchConfig, TrialConfig, check_objective
    from sslsearch.errors import ConfigError

    trial = dataclasses.replace(TrialConfig(), labels=False)
    with pytest.raises(ConfigError, match=r"search\.metric val_knn_acc needs labels"):
        check_objective(trial, SearchConfig(), source="x.yaml")
    check_objective(trial, SearchConfig(metric="rankme"), source="x.yaml")
    with pytest.raises(ConfigError, match="label_free: false"):
        check_objective(dataclasses.replace(TrialConfig(), label_free=False),
                        SearchConfig(metric="lidar"), source="x.yaml")


def test_an_unlabeled_search_reports_a_probe_on_probe_data_dir(tmp_path: Path) -> None:
    from tests.test_data import write_imagefolder

    write_unlabeled_folder(tmp_path / "photos")
    write_imagefolder(tmp_path / "labeled")
    cfg = trial_config({"method": "simclr", "dataset": "imagefolder",
                        "data_dir": str(tmp_path / "photos"), "image_size": 16,
                        "backbone": "small_cnn", "backbone_width": 4, "epochs": 1,
                        "batch_size": 16, "device": "cpu", "label_free_samples": 16,
                        "probe_data_dir": str(tmp_path / "labeled"), "probe_max_iter": 20})
    last = run(cfg)
    assert 0.0 <= last["probe_data_val_acc"] <= 1.0 and 0.0 <= last["probe_data_test_acc"] <= 1.0
    assert "probe_val_acc" not in last and "val_knn_acc" not in last  # reporting only


def test_a_probe_data_dir_without_class_folders_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.run import main

    write_unlabeled_folder(tmp_path / "photos")
    path = _experiment(tmp_path, "rankme")
    doc = yaml.safe_load(path.read_text())
    doc["trial"]["probe_data_dir"] = str(tmp_path / "photos")  # no class folders
    path.write_text(yaml.safe_dump(doc))
    assert main(["--space", "simclr", "--experiment", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probe_data_dir" in err[0]


def test_a_supervised_method_is_refused_where_the_labels_are_hidden() -> None:
    """The trial's own guard (the pre-flight refuses it earlier for a sweep): SupCon with
    ``labels: false`` would train on the labels the experiment hides."""
    import dataclasses

    from sslsearch.config import TrialConfig
    from sslsearch.data import load_dataset
    from sslsearch.errors import ConfigError
    from sslsearch.trial.trial import build_method

    data = load_dataset("digits", max_train_samples=50)
    cfg = dataclasses.replace(TrialConfig(dataset="digits", method="supcon"), labels=False)
    with pytest.raises(ConfigError, match="supcon trains on them"):
        build_method(cfg, data)
    build_method(dataclasses.replace(cfg, labels=True), data)  # with its labels it builds
