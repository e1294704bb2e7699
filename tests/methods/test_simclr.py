"""SimCLR's NT-Xent against a hand-computed value and a slow, obviously-correct loop."""

import math

import pytest
import torch

from sslsearch.methods.simclr import nt_xent_loss


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / den)
    return total / n2


def test_hand_computed_orthogonal_pair() -> None:
    # z = [e1, e2, e1, e2], τ = 1: each anchor sees its positive (s=1), itself excluded, and two
    # orthogonal negatives (s=0): ℓ = −log(e / (e + 2)) = log(1 + 2/e).
    z = torch.eye(2)
    assert nt_xent_loss(z, z.clone(), 1.0).item() == pytest.approx(math.log(1 + 2 / math.e))


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("n", [2, 7])
def test_matches_slow_loop(n: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    assert nt_xent_loss(z1.double(), z2.double(), tau).item() == pytest.approx(
        slow_nt_xent(z1, z2, tau), rel=1e-9)


def test_scale_invariant_and_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    base = nt_xent_loss(z1, z2, 0.5)
    torch.testing.assert_close(nt_xent_loss(3 * z1, 0.5 * z2, 0.5), base)
    torch.testing.assert_close(nt_xent_loss(z2, z1, 0.5), base)


def test_identical_views_low_temperature_near_zero() -> None:
    # Orthogonal samples with identical views: the positive dominates as τ → 0.
    z = torch.eye(4)
    assert nt_xent_loss(z, z, 0.01).item() < 1e-6


def test_gradient_reaches_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    nt_xent_loss(z1, z2, 0.2).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0
