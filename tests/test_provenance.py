"""A sweep's parent run says what produced it: package versions and the git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from sslsearch.reporting.provenance import PACKAGES, sweep_tags


def test_versions_of_what_ran_and_the_commit() -> None:
    tags = sweep_tags()
    assert {f"version.{p}" for p in PACKAGES} <= set(tags)
    assert tags["version.torch"] == torch.__version__  # imported: its own, CUDA build included
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent, check=False).stdout.strip()
    if head:  # a git checkout (CI's is one)
        assert tags["mlflow.source.git.commit"] == head
