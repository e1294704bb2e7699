"""The learning check shared by every method's test: pretraining must beat random init."""

from __future__ import annotations

from typing import Any

from sslsearch.config import trial_config
from sslsearch.train import run

# The default suite's protocol (tests/methods/test_learning.py): a 2,048-image Fashion-MNIST
# subset, the 6,000-image validation split, the small CNN at width 8 (8-16-32-32 channels, a 7×7
# grid: 1,568 features), 4 epochs of batch 64 (128 steps): 8-15 s a method on 2 cores. Heads are
# narrowed per method in the test (the default 2048-wide heads would cost more than the encoder).
FAST = {"dataset": "fashion_mnist", "max_train_samples": 2048, "backbone": "small_cnn",
        "backbone_width": 8, "epochs": 4, "batch_size": 64, "base_lr": 0.002,
        "crop_min_scale": 0.3, "grayscale_p": 0.0, "knn_k": 50, "device": "cpu", "probe": False,
        # The label-free metrics draw nothing from training's random stream: off, for time.
        "label_free": False}
# Digits, small CNN, CPU: seconds per method (the tabular i-Mix test).
DIGITS = {"dataset": "digits", "backbone": "small_cnn", "epochs": 15, "batch_size": 128,
          "base_lr": 0.001,
          "crop_min_scale": 0.5, "grayscale_p": 0.0, "knn_k": 20, "device": "cpu",
          "probe": False}


def knn_gain(method: str, params: dict[str, Any] | None = None, *, setup: dict[str, Any] = DIGITS,
             **overrides: Any) -> tuple[float, float]:
    """(val kNN accuracy at random init, after pretraining) for ``method`` on ``setup``."""
    values = {**setup, "method": method, "method_params": params or {}, **overrides}
    last = run(trial_config(values, source="test"))
    return last["init_knn_acc"], last["val_knn_acc"]  # the same encoder before its first step


def main(argv: list[str] | None = None) -> None:
    """Print each FAST case's gain per seed (how the margins in test_learning.py were measured)::

        python -m tests.methods.learning --precision bf16 --seeds 0,1,2,3,4 [--methods simclr,...]
    """
    import argparse
    import json
    import time

    from tests.methods.test_learning import CASES

    p = argparse.ArgumentParser(prog="python -m tests.methods.learning")
    p.add_argument("--precision", default="auto")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--methods", default=",".join(sorted(CASES)))
    a = p.parse_args(argv)
    for seed in (int(s) for s in a.seeds.split(",")):
        for m in a.methods.split(","):
            case, t0 = CASES[m], time.perf_counter()
            before, after = knn_gain(m, case.params, setup=FAST,
                                     **{**case.overrides, "seed": seed, "precision": a.precision})
            print(json.dumps({"method": m, "seed": seed, "precision": a.precision,
                              "init": round(100 * before, 2),
                              "gain": round(100 * (after - before), 2),
                              "margin": 100 * case.margin,
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
