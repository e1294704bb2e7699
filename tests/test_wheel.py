"""A non-editable install finds the search spaces, the experiments and the embedded data: they
ship inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(ROOT), "-w", str(out)],
                   check=True, capture_output=True, text=True, cwd=out)
    (wheel,) = out.glob("sslsearch-*.whl")
    return wheel


def test_the_wheel_holds_every_module_space_and_experiment(tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    for folder in ("search_spaces", "experiments"):
        for path in (ROOT / folder).glob("*.yaml"):
            assert f"sslsearch/{folder}/{path.name}" in names
    for path in (ROOT / "sslsearch").rglob("*.py"):
        assert path.relative_to(ROOT).as_posix() in names
    # The default experiment's data (sslsearch.data.embedded): the idx files, licence, README.
    embedded = [p for p in (ROOT / "sslsearch" / "data" / "fashion-mnist-small").iterdir()]
    assert len(embedded) >= 6
    for path in embedded:
        assert path.relative_to(ROOT).as_posix() in names


@pytest.mark.slow
def test_a_non_editable_install_runs_a_sweep_from_anywhere(tmp_path: Path) -> None:
    """``pip install`` of the wheel (dependencies taken from this environment) and a one-trial
    ``python -m sslsearch.run --space vicreg.yaml`` from a folder outside the checkout: the
    default experiment, on the Fashion-MNIST subset the wheel carries (sslsearch.data.embedded)."""
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import sslsearch.config as c; print(c.SPACES_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the wheel's copy, not the tree's
    run = subprocess.run([python, "-m", "sslsearch.run", "--space", "vicreg.yaml",
                          "--num-samples", "1", "--epochs", "1", "--quiet", "--no-confirm"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
