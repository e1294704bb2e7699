"""Shared fixtures: small, fast trial configurations on the embedded digits data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores: more intra-op threads than that only adds contention between test processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def needs_fashion_mnist() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
        reason="Debian package dataset-fashion-mnist not installed "
               "(apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so stray files (mlflow.db, results) never collide."""
    monkeypatch.chdir(tmp_path)
