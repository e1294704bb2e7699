"""The torch building blocks the methods and the trial are made of: backbones and heads
(``networks``), the math the methods share (``ops``), the optimisers and their learning rates
(``optim``) and the process group of a trial on several workers (``distributed``).

They import torch and ``sslsearch.errors`` only: nothing here knows of a configuration, a trial,
a search or a report (docs/design.md; tests/test_layout.py checks the floors).
"""
