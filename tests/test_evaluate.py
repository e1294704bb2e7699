import math

import pytest
import torch
from torch import nn

from sslsearch.evaluate import collapse_diagnostics, knn_predict, linear_probe


def test_knn_weighted_vote_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # Query close to class 1's only sample but with two class-0 neighbours at k=3: weights
    # exp(s/T) with T=0.1 make the single near neighbour win.
    q = torch.tensor([[0.1, 1.0]])
    assert knn_predict(bank, labels, q, 2, k=3, temperature=0.1).tolist() == [1]
    # With a huge temperature all weights are ~equal: the majority (class 0) wins.
    assert knn_predict(bank, labels, q, 2, k=3, temperature=1e6).tolist() == [0]


def test_knn_k_is_capped_by_bank_size() -> None:
    bank, labels = torch.randn(5, 3), torch.arange(5) % 2
    assert knn_predict(bank, labels, torch.randn(4, 3), 2, k=200).shape == (4,)


def test_probe_separable_data_and_frozen_assertion() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 4

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        return centers[y] + torch.randn(n, 8, generator=g), y

    backbone = nn.Linear(8, 8)
    with pytest.raises(AssertionError, match="frozen"):
        linear_probe(backbone, split(90), split(30), split(30), 3)
    backbone.requires_grad_(False)
    result = linear_probe(backbone, split(90), split(30), split(30), 3)
    assert result.val_acc > 0.95 and result.test_acc > 0.95


def test_collapse_diagnostics_tell_collapse_from_spread() -> None:
    spread = torch.randn(512, 16)
    collapsed = torch.ones(512, 16) + 1e-6 * torch.randn(512, 16)
    healthy = collapse_diagnostics(spread, spread + 0.01 * torch.randn(512, 16))
    dead = collapse_diagnostics(collapsed)
    assert healthy["embed_std_ratio"] > 0.8 and dead["embed_std_ratio"] < 0.01
    assert healthy["effective_rank"] > 12 and dead["effective_rank"] < 16
    assert healthy["alignment"] < 0.01
    assert healthy["uniformity"] < dead["uniformity"]
    assert math.isclose(float(healthy["embed_std"] * 4), float(healthy["embed_std_ratio"]),
                        rel_tol=1e-5)
