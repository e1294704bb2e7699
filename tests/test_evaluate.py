import math

import pytest
import torch
from torch import nn

from sslsearch.trial.evaluation import collapse_diagnostics, knn_predict, linear_probe


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


def _blobs(n: int, d: int, classes: int, spread: float, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    centers = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * spread
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, d, generator=g), y


def test_probe_separable_data_and_frozen_assertion() -> None:
    g = torch.Generator().manual_seed(0)
    train, val, test = (_blobs(n, 8, 3, 4.0, g) for n in (90, 30, 30))
    backbone = nn.Linear(8, 8)
    with pytest.raises(AssertionError, match="frozen"):
        linear_probe(train, val, test, 3, backbone=backbone)
    backbone.requires_grad_(False)
    result = linear_probe(train, val, test, 3, backbone=backbone)
    assert result.val_acc > 0.95 and result.test_acc > 0.95


def test_probe_converges_to_the_regularised_optimum() -> None:
    """At a fixed weight decay the probe is scikit-learn's converged logistic regression
    (``C = 1/(N·wd)``, intercept unpenalised): the same weights, not 100 steps on the way."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(1)
    train, val, test = (_blobs(n, 20, 4, 0.6, g) for n in (400, 200, 200))
    wd = 1e-2
    result = linear_probe(train, val, test, 4, weight_decays=(wd,), max_iter=1000, tol=1e-7)
    x = train[0]
    z = ((x - x.mean(0)) / (x.std(0) + 1e-6)).double().numpy()
    ref = sklearn.LogisticRegression(C=1 / (len(z) * wd), tol=1e-10, max_iter=10_000).fit(
        z, train[1].numpy())
    zv = ((val[0] - x.mean(0)) / (x.std(0) + 1e-6)).double().numpy()
    ref_acc = float((ref.predict(zv) == val[1].numpy()).mean())
    path = dict(result.path)
    assert path[wd] == pytest.approx(ref_acc, abs=1 / 200)  # at most one validation point apart


def test_probe_weight_decay_is_bracketed_beyond_the_given_grid() -> None:
    """Few samples, many noisy features: the best decay is far above the grid given, and the
    probe walks up until validation accuracy falls on both sides of its choice."""
    g = torch.Generator().manual_seed(2)
    train, val, test = (_blobs(n, 300, 2, 0.1, g) for n in (60, 2000, 200))
    result = linear_probe(train, val, test, 2, weight_decays=(1e-6, 1e-5))
    assert result.weight_decay > 1e-5 and not result.at_grid_edge
    decays = [d for d, _ in result.path]
    i = decays.index(result.weight_decay)
    accs = dict(result.path)
    assert accs[decays[i - 1]] <= result.val_acc and accs[decays[i + 1]] <= result.val_acc
    assert result.weight_decay >= 1e-2 and result.val_acc > accs[1e-6]  # given grid: worse


def test_collapse_diagnostics_tell_collapse_from_spread() -> None:
    spread = torch.randn(512, 16)
    collapsed = torch.ones(512, 16) + 1e-6 * torch.randn(512, 16)
    healthy = collapse_diagnostics(spread, spread + 0.01 * torch.randn(512, 16))
    dead = collapse_diagnostics(collapsed)
    assert healthy["embed_std_ratio"] > 0.8 and dead["embed_std_ratio"] < 0.01
    # total collapse is rank 1 (a constant plus noise: centring first would read it as 16)
    assert healthy["effective_rank"] > 12 and dead["effective_rank"] < 1.01
    assert healthy["alignment"] < 0.01
    assert healthy["uniformity"] < dead["uniformity"]
    assert math.isclose(float(healthy["embed_std"] * 4), float(healthy["embed_std_ratio"]),
                        rel_tol=1e-5)
