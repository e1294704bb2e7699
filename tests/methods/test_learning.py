"""Every method learns: pretraining beats the same encoder at random initialisation.

Default suite (CI runs it): one test per registered method on the FAST protocol of
``tests/methods/learning.py`` (Fashion-MNIST, 2,048 training images, 4 epochs, width-8 CNN), about
10-15 s each on 2 cores. A new method fails here until it has a case below with a measured margin.

The test runs seed 0 at the default ``precision: auto``, the precision users get: bf16 autocast on
a CPU with native bf16 (this project's 2-core avx512_bf16 machines), float32 on other CPUs. Each
margin was set from 5 seeds (0-4) of that exact case at the suite's 2 threads, in both precisions:
the gain in validation kNN over the random-init encoder (``init_knn_acc``, the same weights before
the first step) is listed per seed beside the case, with its mean ± sample sd and minimum, float32
first, then bf16. The margin sits below the smallest of the 10 gains (so another seed, or another
CPU's rounding, does not fail it) and at least 0.8 points above 0 (a method that stopped learning,
whose gain is then ≤ 0, fails): 6,000 validation images, so one image is 0.017 points and the
binomial standard error of one accuracy about 0.55 points. The seed-to-seed sd (about 2 points)
is mostly the random init's: seed 4's init scores 70.0 where seeds 0-3 score 73.3-74.6, and gains
3-5 points more.

Slow (``-m slow``): the shipped ``experiments/fashion_mnist.yaml`` with every method's default
settings must gain ≥ 2 kNN points over its random init in 6 epochs (README, "Baselines").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sslsearch import methods
from sslsearch.config import load_experiment, trial_config
from sslsearch.train import run
from tests.conftest import needs_fashion_mnist
from tests.methods.learning import FAST, knn_gain

# Narrow heads for the FAST protocol: the 2048-wide defaults would cost more than the encoder.
NARROW = {"proj_hidden_dim": 512}


@dataclasses.dataclass(frozen=True)
class Case:
    margin: float  # required gain in validation kNN accuracy (fraction) after the FAST protocol
    params: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(NARROW))
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


# AdamW rates below are the rate itself (lr_scaling auto: not scaled with the batch); they were
# measured as base_lr per 256 examples at batch 64, four times the figures now written.
# Gains in validation-kNN points over seeds 0, 1, 2, 3, 4 (mean ± sd, min), measured 2026-12-02 with
# each case exactly as below (float32); "bf16:" the same under bf16 autocast, 2026-12-03, images
# channels_last (`python -m tests.methods.learning --precision bf16`); the random init then scores
# 74.3, 73.3, 73.4, 74.6, 70.0. Seed 4's random init is an outlier (70.0 against 73.3-74.6), so it
# gains most: the spread is mostly the init's, and the minimum is the figure that matters here.
CASES: dict[str, Case] = {
    # λ = 0.02 for the 512-wide projector (λ·d ≈ 10, as the default 0.0051 for 2048):
    # +3.2, 2.0, 4.4, 4.1, 9.1: 4.5 ± 2.7, min 2.0 (λ 0.0051: +2.1, 1.1, 4.3, 3.8, 8.6).
    # bf16: +3.8, 2.2, 4.3, 4.4, 8.7: 4.7 ± 2.4, min 2.2.
    "barlow": Case(0.015, {"projector_dims": [512, 512, 512], "lambda_offdiag": 0.02}),
    # BYOL's target at m_base 0.9 (not 0.99: 128 steps is too short for a slow target) and a
    # doubled lr; 6 epochs at 2e-3 gained 0.7-7.3 (mean 3.8), 4 epochs at m_base 0.96: 0.9 / 0.1.
    # +1.4, 2.7, 3.6, 1.6, 5.2: 2.9 ± 1.5, min 1.4.
    # bf16: +1.1, 2.3, 3.7, 2.2, 6.2: 3.1 ± 2.0, min 1.1.
    "byol": Case(0.008, {"proj_hidden_dim": 512, "pred_hidden_dim": 512, "m_base": 0.9},
                 {"base_lr": 0.004}),
    # Random pixels at 0.1 (the defaults), a 16-channel decoder for time (dae's cost a step) and a
    # doubled lr. Tried at seed 0 (decoder 16, lr 2e-3 unless noted): the paper's central ¼
    # square -0.6, random blocks of ¼ -0.9, random pixels ¼ +1.3 (+1.8 at 4e-3), ½ -0.1.
    # +2.3, 3.0, 4.3, 2.2, 6.5: 3.7 ± 1.8, min 2.2.
    # bf16: +2.4, 3.1, 4.0, 2.2, 6.3: 3.6 ± 1.7, min 2.2.
    "context_encoder": Case(0.015, {"decoder_dim": 16}, {"base_lr": 0.004}),
    # σ 0.5 gaussian noise (default), a 16-channel decoder for time (13-16 s; the default 32: 21 s,
    # +2.5, 2.6, 3.2, 3.2, 6.4, min 2.5).
    # +2.3, 2.5, 3.6, 1.7, 7.1: 3.4 ± 2.1, min 1.7.
    # bf16: +2.2, 2.3, 3.6, 1.6, 7.0: 3.3 ± 2.2, min 1.6.
    "dae": Case(0.01, {"decoder_dim": 16}),
    # bf16: +2.8, 3.7, 4.8, 4.2, 8.9: 4.9 ± 2.3, min 2.8.
    "dare": Case(0.015),  # +3.2, 3.1, 5.1, 4.2, 8.6: 4.9 ± 2.3, min 3.1
    # bf16: +4.1, 5.5, 5.2, 5.3, 9.7: 6.0 ± 2.2, min 4.1.
    "imix": Case(0.02),  # +4.1, 5.5, 5.5, 4.9, 9.7: 6.0 ± 2.2, min 4.1
    # A 1,024-key queue (the default 4,096 is twice the 2,048 images, so keys of the same image
    # are negatives): +2.5, -0.1, 2.9, 3.2, 7.1 with 4,096; momentum 0.9, not 0.99: +0.7, -2.0.
    # +3.0, 1.6, 3.4, 3.9, 7.6: 3.9 ± 2.3, min 1.6.
    # bf16: +3.0, 1.9, 3.1, 3.8, 7.7: 3.9 ± 2.2, min 1.9.
    "moco": Case(0.01, {"proj_hidden_dim": 512, "queue_size": 1024}),
    # bf16: +3.5, 3.3, 5.3, 4.6, 9.2: 5.2 ± 2.4, min 3.3.
    "npair": Case(0.02),  # +3.7, 3.4, 5.5, 4.9, 9.2: 5.4 ± 2.3, min 3.4
    # One neighbour per image on the trial's crop (crop_views), 8 px cells, 2 px gaps, no jitter,
    # patches resized to 28 px: a quarter of the defaults' patches (all 8 neighbours, no crop), and
    # the defaults are no better on this protocol: +1.5, -2.4, +0.4, +1.8, +6.2 (1 neighbour, no
    # crop: +1.6, -0.8, +2.0, +2.9, +5.8; 6 px cells, 1 px jitter: +2.2, 1.7, 0.8, 3.7, 3.4). On
    # the fashion_mnist experiment's 6 epochs and width 16 the defaults gain +4.3 (min +0.8).
    # +1.8, 1.2, 2.1, 1.7, 4.8: 2.3 ± 1.4, min 1.2.
    # bf16: +1.8, 1.1, 2.5, 1.8, 2.5: 1.9 ± 0.6, min 1.1.
    "patch_location": Case(0.01, {"neighbours": 1, "crop_views": True}),
    # Two angles per image (one per view) for time, a linear head (default): 10-13 s. The default
    # four angles: 17 s, +5.8, 3.0, 3.4, 4.7, 8.2, min 3.0.
    # +5.3, 2.6, 4.2, 4.4, 7.8: 4.9 ± 1.9, min 2.6.
    # bf16: +5.4, 2.3, 4.0, 4.3, 7.5: 4.7 ± 1.9, min 2.3.
    "rotation": Case(0.015, {"rotations_per_image": 2}),
    # bf16: +3.7, 3.5, 5.5, 5.1, 9.2: 5.4 ± 2.3, min 3.5.
    "simclr": Case(0.02),  # +3.7, 3.6, 5.5, 4.8, 9.4: 5.4 ± 2.4, min 3.6
    # The default 128/32 head at a doubled lr (2e-3: +1.9, 1.4, 2.2, 2.2, 6.5; the paper's 2048/512
    # head: +1.4, -0.1).
    # +1.9, 3.0, 4.2, 1.5, 7.5: 3.6 ± 2.4, min 1.5.
    # bf16: +1.0, 3.2, 3.5, 2.1, 6.9: 3.3 ± 2.2, min 1.0.
    "simsiam": Case(0.008, {}, {"base_lr": 0.004}),
    # bf16: +5.6, 6.0, 5.8, 5.2, 9.9: 6.5 ± 1.9, min 5.2.
    "supcon": Case(0.03),  # +6.0, 6.0, 5.5, 5.1, 9.6: 6.5 ± 1.8, min 5.1
    # bf16: +2.9, 4.4, 4.8, 4.4, 9.0: 5.1 ± 2.3, min 2.9.
    "swav": Case(0.015),  # +3.1, 4.9, 4.7, 4.1, 9.0: 5.2 ± 2.2, min 3.1
    # bf16: +3.1, 4.2, 5.0, 3.5, 8.3: 4.8 ± 2.1, min 3.0.
    "triplet": Case(0.015),  # +2.6, 3.9, 4.6, 2.8, 8.5: 4.5 ± 2.4, min 2.6
    # +3.6, 3.5, 5.6, 4.9, 9.8: 5.5 ± 2.6, min 3.5
    # bf16: +3.3, 3.3, 5.4, 5.1, 9.6: 5.3 ± 2.6, min 3.3.
    "vicreg": Case(0.02, {"expander_dims": [512, 512, 512]}),
}


def test_every_method_has_a_learning_case() -> None:
    assert set(CASES) == set(methods.available())


@needs_fashion_mnist()
@pytest.mark.parametrize("method", methods.available())
def test_learns_fast(method: str) -> None:
    case = CASES[method]
    before, after = knn_gain(method, case.params, setup=FAST, **case.overrides)
    assert after >= before + case.margin, (before, after)


@pytest.mark.slow
@needs_fashion_mnist()
@pytest.mark.parametrize("method", methods.available())
def test_learns_on_the_fashion_mnist_experiment(method: str) -> None:
    exp = load_experiment("fashion_mnist")
    cfg = trial_config({"method": method, "method_params": {}, "probe": False}, base=exp.trial)
    last = run(cfg)
    assert last["val_knn_acc"] >= last["init_knn_acc"] + 0.02, last


@pytest.mark.slow
@needs_fashion_mnist()
@pytest.mark.parametrize("method", ["vicreg", "barlow"])
def test_defaults_hold_at_batch_256_on_10000_images(method: str) -> None:
    """The peer setup's size (10,000 images, batch 256) with the fashion_mnist experiment's
    AdamW settings: the rate tuned at batch 64 must hold (lr_scaling auto: AdamW's is not
    scaled). Under the linear rule VICReg ended 4.7 points below its random init here and Barlow
    Twins below the raw pixels; at their own rate (the experiment's methods: block, 1e-3) +3.7 and
    +3.7 (seed 0; docs/lr-scaling.md). About 6 min each on 2 cores."""
    exp = load_experiment("fashion_mnist")
    cfg = trial_config({"method": method, "method_params": {}, "probe": False,
                        "label_free": False, "max_train_samples": 10_000, "batch_size": 256},
                       base=exp.trial_for(method))  # the experiment's rate for this method
    last = run(cfg)
    assert last["val_knn_acc"] >= last["init_knn_acc"] + 0.02, last
    assert last["val_knn_acc"] > last["raw_knn_acc"], last
