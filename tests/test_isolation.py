"""The training loop must run with torch alone (it is what runs on a bare GPU machine)."""

import subprocess
import sys


def test_train_imports_no_ray_optuna_mlflow() -> None:
    code = ("import sys, sslsearch.train\n"
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"sslsearch.train imported {out.stdout.strip()}"
