"""The learning check shared by every method's test: pretraining must beat random init."""

from __future__ import annotations

from typing import Any

from sslsearch.config import trial_config
from sslsearch.train import evaluate_initial, run

# Digits, small CNN, CPU: a few seconds per method. Fashion-MNIST uses a stratified subset.
DIGITS = {"dataset": "digits", "backbone": "small_cnn", "epochs": 15, "batch_size": 128,
          "crop_min_scale": 0.5, "grayscale_p": 0.0, "knn_k": 20, "device": "cpu",
          "probe": False}
FASHION = {"dataset": "fashion_mnist", "backbone": "small_cnn", "max_train_samples": 5000,
           "epochs": 6, "batch_size": 256, "crop_min_scale": 0.3, "grayscale_p": 0.0,
           "knn_k": 50, "device": "cpu", "probe": False}


def knn_gain(method: str, params: dict[str, Any] | None = None, *, setup: dict[str, Any] = DIGITS,
             **overrides: Any) -> tuple[float, float]:
    """(val kNN accuracy at random init, after pretraining) for ``method`` on ``setup``."""
    values = {**setup, "method": method, "method_params": params or {}, **overrides}
    cfg = trial_config(values, source="test")
    before = evaluate_initial(cfg)["val_knn_acc"]
    after = run(cfg)["val_knn_acc"]
    return before, after
