"""One trial, torch only: set up its data, method and augmentations, take its steps and judge its
encoder (``trial``), the batched on-device augmentation (``augment`` on ``imageops``), save and
read its checkpoints (``checkpoint``), the frozen-feature evaluation (``evaluation``: the kNN
monitor, the linear probe, collapse diagnostics), the label-free measures (``labelfree``) and the
raw-pixel baselines (``baselines``). The loop that runs them is ``sslsearch.train`` (``python -m
sslsearch.train``).

They import torch, the ground floor, ``parts/``, ``methods/`` and ``data/``, never Ray, Optuna,
MLflow, the search or the reports (docs/design.md; tests/test_layout.py and
tests/test_isolation.py check it): a trial runs on a machine that has only torch.
"""
