"""The embedded Fashion-MNIST subset (dataset ``fashion_mnist_small``, the default experiment's
data): shipped inside the package with its licence, loaded with no data_dir, the same on every
load, and regenerated from Debian's files to the same content."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from sslsearch.config import DEFAULT_EXPERIMENT, load_experiment
from sslsearch.data import DATASETS, Split, load_dataset
from sslsearch.data.embedded import EMBEDDED_DIR, N_TEST, N_TRAIN
from sslsearch.data.survey import check_splits, dataset_shape
from sslsearch.errors import ConfigError
from tests.conftest import FASHION_DIR, needs_fashion_mnist

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def test_the_package_holds_the_subset_its_licence_and_its_readme() -> None:
    assert {*IDX_FILES, "LICENSE", "README.md"} <= {p.name for p in EMBEDDED_DIR.iterdir()}
    assert sum((EMBEDDED_DIR / name).stat().st_size for name in IDX_FILES) < 3_000_000
    licence = (EMBEDDED_DIR / "LICENSE").read_text()
    assert "The MIT License" in licence and "Zalando SE" in licence
    readme = (EMBEDDED_DIR / "README.md").read_text()
    assert f"{N_TRAIN:,}" in readme and f"{N_TEST:,}" in readme
    assert "python -m sslsearch.data.make_embedded" in readme


def test_it_loads_without_a_data_dir_with_stratified_seeded_splits() -> None:
    assert "fashion_mnist_small" in DATASETS
    bundle = load_dataset("fashion_mnist_small", val_fraction=0.25)
    train, val, test = bundle.train, bundle.val, bundle.test
    assert isinstance(train, Split) and isinstance(val, Split) and isinstance(test, Split)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (1, 28, 28)
    assert (len(train), len(val), len(test)) == (N_TRAIN * 3 // 4, N_TRAIN // 4, N_TEST)
    assert torch.bincount(val.y).tolist() == [N_TRAIN // 40] * 10  # stratified, every class
    assert torch.bincount(train.y).tolist() == [N_TRAIN * 3 // 40] * 10
    assert torch.bincount(test.y).tolist() == [N_TEST // 10] * 10
    assert bundle.mean[0] == pytest.approx(0.286, abs=0.005)  # Fashion-MNIST's own statistics
    again = load_dataset("fashion_mnist_small", val_fraction=0.25)
    assert torch.equal(again.train.x, train.x) and torch.equal(again.val.y, val.y)
    other = load_dataset("fashion_mnist_small", val_fraction=0.25, seed=1)
    assert not torch.equal(other.val.x, val.x) and torch.equal(other.test.x, test.x)


def test_the_pre_flight_reads_its_class_counts() -> None:
    shape = dataset_shape("fashion_mnist_small", None, False)
    assert shape is not None
    assert shape.train_counts == (N_TRAIN // 10,) * 10 and shape.n_images == N_TRAIN + N_TEST
    assert (shape.channels, shape.side) == (1, 28)
    # One training image: nine classes get none, and the pre-flight says so.
    with pytest.raises(ConfigError, match=r"fashion_mnist_small: class '\d' has 400 images: 0 "):
        check_splits(shape, True, 0.25, 1)


def test_the_default_experiment_runs_on_it_and_quick_stays_digits() -> None:
    default = load_experiment()
    assert default.source == str(load_experiment(DEFAULT_EXPERIMENT).source)
    assert default.trial.dataset == "fashion_mnist_small" and default.trial.data_dir is None
    assert load_experiment("quick").trial.dataset == "digits"


@needs_fashion_mnist()
def test_regenerating_from_debians_files_gives_the_shipped_subset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.data.make_embedded import main

    assert main(["--source", str(FASHION_DIR), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(" bytes") == 4
    for name in IDX_FILES:  # the content; the gzip bytes also match where zlib is the same
        assert gzip.decompress((tmp_path / name).read_bytes()) == gzip.decompress(
            (EMBEDDED_DIR / name).read_bytes()), name


@pytest.mark.slow  # the README's main job, shortened: 3 trials of 1 epoch, the best confirmed twice
def test_the_main_job_runs_on_the_default_experiment_with_clean_output(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sslsearch.run", "--space", "vicreg.yaml",
                          "--num-samples", "3", "--epochs", "1", "--grace-period", "1",
                          "--confirm-top", "1", "--confirm-seeds", "2", "--name", "main",
                          "--storage", "results"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "experiment fashion_small.yaml" in out.stdout
    for chatter in ("Token authentication is enabled", "Creating initial MLflow database",
                    "A new study created", " INFO "):  # third-party lines (sslsearch.console)
        assert chatter not in text, chatter
    summary = (tmp_path / "results" / "main" / "summary.md").read_text()
    assert "None" not in summary and "None" not in out.stdout
    assert "too few trials (3)" in summary  # 3 pairs: no rank correlation printed
    assert "raw pixels (standardised) val kNN 0." in summary
