"""VICReg's loss against an independent, loop-by-loop computation of its definition in
docs/methods.md."""

import math

import pytest
import torch

from sslsearch.methods.vicreg import vicreg_loss


def slow_vicreg(z1: torch.Tensor, z2: torch.Tensor, lam: float, mu: float, nu: float
                ) -> tuple[float, float, float, float]:
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])
    s = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var_cov(z: list[list[float]]) -> tuple[float, float]:
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        cov = [[sum((z[i][p] - means[p]) * (z[i][q] - means[q]) for i in range(n)) / (n - 1)
                for q in range(d)] for p in range(d)]
        v = sum(max(0.0, 1.0 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        c = sum(cov[p][q] ** 2 for p in range(d) for q in range(d) if p != q) / d
        return v, c

    v1, c1 = var_cov(a)
    v2, c2 = var_cov(b)
    v, c = (v1 + v2) / 2, c1 + c2
    return lam * s + mu * v + nu * c, s, v, c


def test_hand_computed_small_case() -> None:
    # Z = [[0,0],[2,0]], Z' = [[0,0],[0,2]] (N=2, d=2).
    # s = (4 + 4) / 4 = 2. Var(Z) per column: [2, 0] → v(Z) = (max(0,1−√2.0001) + (1−√1e-4))/2
    # = (0 + 0.99)/2 = 0.495; same for Z'. Cov off-diagonal is 0 (one column constant) → c = 0.
    z1 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    z2 = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    loss, s, v, c = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    assert s.item() == pytest.approx(2.0)
    assert v.item() == pytest.approx(0.495, abs=1e-6)
    assert c.item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(25 * 2.0 + 25 * 0.495, rel=1e-6)


@pytest.mark.parametrize("n,d", [(2, 3), (8, 5), (16, 4)])
def test_matches_slow_loop(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g) * 0.7, torch.randn(n, d, generator=g) * 1.3
    got = vicreg_loss(z1.double(), z2.double(), 10.0, 20.0, 3.0)
    want = slow_vicreg(z1, z2, 10.0, 20.0, 3.0)
    for g_, w in zip(got, want, strict=True):
        assert g_.item() == pytest.approx(w, rel=1e-9, abs=1e-12)


def test_identical_views_have_zero_invariance() -> None:
    z = torch.randn(10, 6)
    _, s, _, _ = vicreg_loss(z, z.clone())
    assert s.item() == 0.0


def test_collapsed_embeddings_pay_full_variance_penalty() -> None:
    z = torch.ones(8, 4)
    _, _, v, c = vicreg_loss(z, z)
    assert v.item() == pytest.approx(1 - math.sqrt(1e-4))
    assert c.item() == 0.0


def test_gradient_flows_to_both_branches() -> None:
    z1 = torch.randn(6, 4, requires_grad=True)
    z2 = torch.randn(6, 4, requires_grad=True)
    vicreg_loss(z1, z2)[0].backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0
