"""Barlow Twins' loss against a hand-computed value and a slow, obviously-correct loop; learning."""

import math

import pytest
import torch

from sslsearch.methods.barlow import Config, barlow_twins_loss, barlow_twins_terms


def slow_barlow(z1: torch.Tensor, z2: torch.Tensor, lam: float, eps: float = 1e-5
                ) -> tuple[float, float, float]:
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])

    def standardise(z: list[list[float]]) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            mean = sum(z[i][j] for i in range(n)) / n
            var = sum((z[i][j] - mean) ** 2 for i in range(n)) / n  # biased, as BatchNorm
            for i in range(n):
                out[i][j] = (z[i][j] - mean) / math.sqrt(var + eps)
        return out

    za, zb = standardise(a), standardise(b)
    c = [[sum(za[k][i] * zb[k][j] for k in range(n)) / n for j in range(d)] for i in range(d)]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off, on, off


def test_hand_computed_batch_of_two() -> None:
    # N = 2, d = 2: z1 = [[1,1],[-1,-1]] and z2 = [[1,-1],[-1,1]] are already standardised (mean 0,
    # biased variance 1), so with k = 1/(1+ε): C = k·[[1,-1],[1,-1]], on = (1−k)² + (1+k)²,
    # off = 2k²; with ε = 0, on = 4 and off = 2.
    z1 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    loss, on, off = barlow_twins_terms(z1, z2, 0.1, eps=0.0)
    assert on.item() == pytest.approx(4.0)
    assert off.item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(4.2)
    k = 1 / (1 + 1e-5)
    assert barlow_twins_loss(z1, z2, 0.1).item() == pytest.approx(
        (1 - k) ** 2 + (1 + k) ** 2 + 0.1 * 2 * k**2, rel=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.0051, 0.1])
@pytest.mark.parametrize("n,d", [(2, 3), (8, 5), (16, 4)])
def test_matches_slow_loop(n: int, d: int, lam: float) -> None:
    g = torch.Generator().manual_seed(n * d)
    z1 = torch.randn(n, d, generator=g) * 0.7 + 2
    z2 = torch.randn(n, d, generator=g) * 1.3 - 1
    got = barlow_twins_terms(z1.double(), z2.double(), lam)
    want = slow_barlow(z1, z2, lam)
    for g_, w in zip(got, want, strict=True):
        assert g_.item() == pytest.approx(w, rel=1e-9, abs=1e-12)


def test_identical_views_leave_only_redundancy() -> None:
    # C is then the correlation matrix: unit diagonal (up to ε), only the off-diagonal term is left.
    z = torch.randn(64, 6, dtype=torch.float64)
    _, on, off = barlow_twins_terms(z, z.clone(), 0.0051)
    assert on.item() < 1e-8
    corr = torch.corrcoef(z.T)
    assert off.item() == pytest.approx((corr.pow(2).sum() - 6).item(), rel=1e-4)


def test_collapsed_embeddings_pay_the_full_invariance_term() -> None:
    # A constant dimension standardises to 0 (ε keeps it finite): C = 0, on = d, off = 0.
    z = torch.ones(8, 5)
    loss, on, off = barlow_twins_terms(z, z, 0.0051)
    assert torch.isfinite(loss)
    assert on.item() == pytest.approx(5.0) and off.item() == 0.0


def test_invariant_to_per_dimension_affine_maps_and_symmetric() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(32, 4, generator=g).double(), torch.randn(32, 4, generator=g).double()
    base = barlow_twins_loss(z1, z2, 0.02)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 7.0]).double(), torch.randn(4).double()
    torch.testing.assert_close(barlow_twins_loss(z1 * scale + shift, z2 - shift, 0.02), base,
                               rtol=1e-4, atol=0)  # ε breaks exact invariance
    torch.testing.assert_close(barlow_twins_loss(z2, z1, 0.02), base)


def test_half_precision_is_computed_in_float32_even_under_autocast() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    want = barlow_twins_loss(z1.bfloat16().float(), z2.bfloat16().float(), 0.0051)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = barlow_twins_loss(z1.bfloat16(), z2.bfloat16(), 0.0051)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_both_views() -> None:
    z1 = torch.randn(6, 4, requires_grad=True)
    z2 = torch.randn(6, 4, requires_grad=True)
    barlow_twins_loss(z1, z2, 0.0051).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0


def test_config_checks() -> None:
    Config().check()
    with pytest.raises(ValueError):
        Config(lambda_offdiag=-1.0).check()
    with pytest.raises(ValueError):
        Config(projector_dims=()).check()
