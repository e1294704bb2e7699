"""The torch building blocks the methods, the data pipeline and the trial are made of: backbones
and heads (``networks``), the math the methods share (``ops``), the optimisers and their learning
rates (``optim``), the process group of a trial on several workers (``distributed``) and the
on-device augmentation (``augment`` on ``imageops``).

They import torch and the ground floor (``sslsearch.config``, ``sslsearch.errors``) only: nothing
here knows of a trial, a search or a report (docs/design.md; tests/test_layout.py checks it).
"""
