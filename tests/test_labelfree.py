"""Label-free metrics (sslsearch.trial.labelfree): hand-computed values, collapse, invariances,
shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslsearch.trial.labelfree import (
    EPS,
    LIDAR_DELTA,
    METRICS,
    alpha_req,
    alpha_req_score,
    covariance_spectrum,
    lidar,
    lidar_matrix,
    rankme,
    smoothed_entropy_rank,
)


def _entropy_rank(p_raw: list[float]) -> float:
    """exp(−Σ p log p) with p = v/Σv + ε, by hand in plain Python."""
    total = sum(p_raw)
    p = [v / total + EPS for v in p_raw]
    return math.exp(-sum(x * math.log(x) for x in p))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(d: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


# --- RankMe --------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_rankme_of_identity_is_d(d: int) -> None:
    value = rankme(torch.eye(d))
    assert value.ndim == 0 and value.dtype == torch.float64
    assert math.isclose(float(value), _entropy_rank([1.0] * d), rel_tol=1e-12)
    assert math.isclose(float(value), d, rel_tol=1e-5)  # ε = 1e-7 moves it by ~d·ε·log d


def test_rankme_hand_computed_on_a_diagonal_matrix() -> None:
    # singular values 3, 1 (and a zero row): p = (0.75, 0.25) + ε
    z = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    expected = math.exp(-(0.75 + EPS) * math.log(0.75 + EPS) - (0.25 + EPS) * math.log(0.25 + EPS))
    assert math.isclose(float(rankme(z)), expected, rel_tol=1e-12)
    assert math.isclose(expected, 1.7548, rel_tol=1e-4)


def test_smoothed_entropy_rank_by_hand_and_zero_spectrum() -> None:
    v = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert math.isclose(float(smoothed_entropy_rank(v)), _entropy_rank([4, 2, 1, 1]), rel_tol=1e-12)
    # round-off negatives are zero; an all-zero spectrum is rank ≈ 1, not NaN
    rounded = torch.tensor([1.0, -1e-18], dtype=torch.float64)
    assert math.isclose(float(smoothed_entropy_rank(rounded)), _entropy_rank([1.0, 0.0]),
                        rel_tol=1e-12)
    assert math.isclose(float(smoothed_entropy_rank(torch.zeros(8, dtype=torch.float64))), 1.0,
                        abs_tol=1e-4)


def test_rankme_is_invariant_to_rotation_and_scale_not_translation() -> None:
    g = _gen(1)
    z = torch.randn(64, 8, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2.0, 8)
    base = float(rankme(z))
    assert math.isclose(float(rankme(z @ _orthogonal(8, g))), base, rel_tol=1e-10)
    assert math.isclose(float(rankme(_orthogonal(64, g) @ z)), base, rel_tol=1e-10)
    assert math.isclose(float(rankme(37.0 * z)), base, rel_tol=1e-10)
    assert float(rankme(z + 100.0)) < 0.5 * base  # uncentred: a shared offset dominates


def test_rankme_float32_and_float64_agree() -> None:
    z = torch.randn(128, 12, generator=_gen(2))
    assert math.isclose(float(rankme(z)), float(rankme(z.double())), rel_tol=1e-6)


# --- LiDAR ---------------------------------------------------------------------------------------

def test_lidar_two_images_two_views_by_hand() -> None:
    # image 0: views (1, 0), (3, 0); image 1: views (−1, 1), (−1, −1)
    views = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[-1.0, 1.0], [-1.0, -1.0]]])
    # μ_0 = (2, 0), μ_1 = (−1, 0), μ = (0.5, 0): Σ_b = ((1.5)² + (1.5)²)/(2−1) e₁e₁ᵀ = 4.5 e₁e₁ᵀ
    # Σ_w = [((−1,0),(1,0)) + ((0,1),(0,−1)) outer products]/(2·1) + δI = I + δI
    # Σ_lidar = Σ_b/(1 + δ): eigenvalues (4.5/(1+δ), 0) → p = (1 + ε, ε)
    m = lidar_matrix(views)
    expected_m = torch.tensor([[4.5, 0.0], [0.0, 0.0]], dtype=torch.float64) / (1 + LIDAR_DELTA)
    assert torch.allclose(m, expected_m, atol=1e-12)
    expected = math.exp(-(1 + EPS) * math.log(1 + EPS) - EPS * math.log(EPS))
    assert math.isclose(float(lidar(views)), expected, rel_tol=1e-12)  # ≈ 1: two classes, rank 1


def test_lidar_four_images_closed_form() -> None:
    # class means (±2, 0), (0, ±1); views ± s along e₁ for the first two, along e₂ for the others
    s = 0.5
    means = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    offsets = torch.tensor([[s, 0.0], [s, 0.0], [0.0, s], [0.0, s]], dtype=torch.float64)
    views = torch.stack([means + offsets, means - offsets], dim=1)  # 4 × 2 × 2
    # Σ_b = diag(8, 2)/3; Σ_w = (s² + δ)·I → eigenvalues ∝ (8, 2) → p = (0.8, 0.2) + ε
    m = lidar_matrix(views)
    expected_m = torch.diag(torch.tensor([8.0, 2.0], dtype=torch.float64)) / 3
    expected_m = expected_m / (s**2 + LIDAR_DELTA)
    assert torch.allclose(m, expected_m, rtol=1e-12)
    assert math.isclose(float(lidar(views)), _entropy_rank([0.8, 0.2]), rel_tol=1e-12)


def test_lidar_matches_a_step_by_step_numpy_computation() -> None:
    rng = np.random.default_rng(3)
    n, q, d = 5, 3, 4
    e = rng.normal(size=(n, q, d)) * np.array([1.0, 0.5, 0.2, 0.05])
    delta = 1e-2  # large enough to matter against the smallest within-class variances
    mu_i = e.mean(axis=1)
    mu = mu_i.mean(axis=0)
    sigma_b = sum(np.outer(mu_i[i] - mu, mu_i[i] - mu) for i in range(n)) / (n - 1)
    sigma_w = sum(np.outer(e[i, j] - mu_i[i], e[i, j] - mu_i[i])
                  for i in range(n) for j in range(q)) / (n * (q - 1)) + delta * np.eye(d)
    w, v = np.linalg.eigh(sigma_w)
    root = v @ np.diag(w**-0.5) @ v.T
    lam = np.clip(np.linalg.eigvalsh(root @ sigma_b @ root), 0, None)
    p = lam / lam.sum() + 1e-7
    expected = float(np.exp(-(p * np.log(p)).sum()))
    assert math.isclose(float(lidar(torch.from_numpy(e), delta=delta)), expected, rel_tol=1e-10)
    # δ matters: the unregularised value differs
    assert not math.isclose(float(lidar(torch.from_numpy(e), delta=1e-9)), expected, rel_tol=1e-3)


def test_lidar_invariances() -> None:
    g = _gen(4)
    views = torch.randn(16, 3, 6, generator=g, dtype=torch.float64)
    base = float(lidar(views))
    q = _orthogonal(6, g)
    assert math.isclose(float(lidar(views @ q)), base, rel_tol=1e-9)              # rotation
    assert math.isclose(float(lidar(views + 5.0)), base, rel_tol=1e-9)            # translation
    assert math.isclose(float(lidar(views[torch.randperm(16, generator=g)])), base, rel_tol=1e-9)
    assert math.isclose(float(lidar(views[:, [2, 0, 1]])), base, rel_tol=1e-9)    # view order


# --- α-ReQ ---------------------------------------------------------------------------------------

def _with_covariance_eigenvalues(lam: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """An n × d matrix whose centred covariance has exactly the eigenvalues ``lam``."""
    d = lam.numel()
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    u, _ = torch.linalg.qr(a - a.mean(dim=0))  # orthonormal columns, each summing to 0
    return math.sqrt(n - 1) * u * lam.sqrt() @ _orthogonal(d, g).T + 3.0


def test_alpha_req_is_one_for_eigenvalues_one_over_k() -> None:
    g = _gen(5)
    k = torch.arange(1, 21, dtype=torch.float64)
    z = _with_covariance_eigenvalues(1.0 / k, 64, g)
    assert torch.allclose(covariance_spectrum(z), 1.0 / k, rtol=1e-10)
    alpha = alpha_req(z)
    assert alpha.ndim == 0 and math.isclose(float(alpha), 1.0, rel_tol=1e-10)
    assert math.isclose(float(alpha_req_score(alpha)), 0.0, abs_tol=1e-10)
    # k^{-2} gives 2 over any range; a restricted range is honoured
    z2 = _with_covariance_eigenvalues(k**-2.0, 64, g)
    assert math.isclose(float(alpha_req(z2, k_min=3, k_max=10)), 2.0, rel_tol=1e-10)


def test_alpha_req_least_squares_by_hand() -> None:
    # eigenvalues (1, 1/2, 1/8): log λ = (0, −log 2, −3 log 2) against log k = (0, log 2, log 3)
    g = _gen(6)
    z = _with_covariance_eigenvalues(torch.tensor([1.0, 0.5, 0.125], dtype=torch.float64), 32, g)
    x = np.log([1.0, 2.0, 3.0])
    y = np.log([1.0, 0.5, 0.125])
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert math.isclose(float(alpha_req(z)), -slope, rel_tol=1e-10)


def test_alpha_req_drops_numerically_zero_eigenvalues() -> None:
    # rank 3 in 10 dimensions: the 7 zero eigenvalues are round-off and are not fitted
    g = _gen(7)
    z = _with_covariance_eigenvalues(torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64), 40, g)
    z = torch.cat([z, torch.zeros(40, 7, dtype=torch.float64)], dim=1) @ _orthogonal(10, g)
    assert math.isclose(float(alpha_req(z)), 1.0, rel_tol=1e-8)


def test_alpha_req_invariances() -> None:
    g = _gen(8)
    z = torch.randn(100, 12, generator=g, dtype=torch.float64) * torch.linspace(1.0, 0.05, 12)
    base = float(alpha_req(z))
    assert math.isclose(float(alpha_req(z @ _orthogonal(12, g))), base, rel_tol=1e-9)
    assert math.isclose(float(alpha_req(4.0 * z - 7.0)), base, rel_tol=1e-9)


def test_alpha_req_score_peaks_at_one_and_keeps_the_type() -> None:
    assert alpha_req_score(1.0) == 0.0
    assert alpha_req_score(0.5) == alpha_req_score(1.5) == -0.5
    assert isinstance(alpha_req_score(2.0), float)
    t = alpha_req_score(torch.tensor([0.0, 1.0, math.inf]))
    assert t.tolist() == [-1.0, 0.0, -math.inf]


# --- collapse ------------------------------------------------------------------------------------

def _healthy(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian features with covariance spectrum k^{-1}: α ≈ 1 and spread over all d axes."""
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale


def _healthy_views(n: int, q: int, d: int, g: torch.Generator) -> torch.Tensor:
    images = _healthy(n, d, g)[:, None, :]
    return images + 0.1 * _healthy(n * q, d, g).reshape(n, q, d)


def test_dimensional_collapse_scores_worst_on_every_metric() -> None:
    g = _gen(9)
    n, q, d = 256, 4, 32
    u = torch.randn(d, generator=g, dtype=torch.float64)
    # features on one line through a constant vector, plus tiny noise
    t = torch.randn(n, q, 1, generator=g, dtype=torch.float64)
    t = t[:, :1] + 0.1 * t  # per-image position plus a little per-view jitter along the line
    dead_views = 1.0 + t * u + 1e-6 * torch.randn(n, q, d, generator=g, dtype=torch.float64)
    good_views = _healthy_views(n, q, d, g)
    dead, good = dead_views[:, 0], good_views[:, 0]

    assert float(rankme(dead)) < 2.1 < 20 < float(rankme(good))
    assert float(lidar(dead_views)) < 1.1 < 20 < float(lidar(good_views))
    assert float(alpha_req_score(alpha_req(dead))) < -2 < -0.2 < float(
        alpha_req_score(alpha_req(good)))


def test_constant_plus_tiny_noise_scores_worst_on_rankme_and_alpha_req() -> None:
    g = _gen(10)
    n, d = 512, 32
    dead = torch.ones(n, d, dtype=torch.float64) + 1e-6 * torch.randn(n, d, generator=g,
                                                                       dtype=torch.float64)
    good = _healthy(n, d, g)
    assert float(rankme(dead)) < 1.01 and float(rankme(good)) > 20
    # centred, the noise is all that is left: a white spectrum, α far from 1
    assert float(alpha_req_score(alpha_req(dead))) < -0.5 < -0.2 < float(
        alpha_req_score(alpha_req(good)))


def test_lidar_reads_a_constant_plus_isotropic_view_noise_as_full_rank() -> None:
    # Documented blind spot (not a wish): LiDAR is translation- and, up to δ, scale-free, so
    # i.i.d. noise around one point is an isotropic LDA problem. RankMe catches this case.
    g = _gen(11)
    n, q, d = 128, 4, 16
    views = 1.0 + 1e-6 * torch.randn(n, q, d, generator=g, dtype=torch.float64)
    assert float(lidar(views)) > 0.7 * d
    assert float(rankme(views.reshape(n * q, d))) < 1.01


def test_exact_collapse_is_the_minimum_of_every_metric() -> None:
    z = torch.full((16, 4), 2.5)
    assert math.isclose(float(rankme(z)), 1.0, abs_tol=1e-4)
    assert math.isclose(float(lidar(z.reshape(8, 2, 4))), 1.0, abs_tol=1e-4)
    assert float(alpha_req(z)) == math.inf
    assert float(alpha_req_score(alpha_req(z))) == -math.inf


def test_non_finite_features_give_nan_not_an_exception() -> None:
    z = torch.randn(10, 3, generator=_gen(12))
    z[2, 1] = math.nan
    assert math.isnan(float(rankme(z)))
    assert math.isnan(float(alpha_req(z)))
    views = torch.randn(5, 2, 3, generator=_gen(12))
    views[0, 0, 0] = math.inf
    assert math.isnan(float(lidar(views)))


# --- shapes and the registry ---------------------------------------------------------------------

@pytest.mark.parametrize(("fn", "shape", "message"), [
    (rankme, (4,), "2-D"),
    (rankme, (2, 3, 4), "2-D"),
    (rankme, (0, 3), "non-empty"),
    (lidar, (4, 3), "3-D"),
    (lidar, (1, 3, 4), "n ≥ 2 images"),
    (lidar, (4, 1, 4), "q ≥ 2 views"),
    (alpha_req, (5,), "2-D"),
    (alpha_req, (2, 4), "n ≥ 3 samples"),
    (alpha_req, (10, 1), "d ≥ 2"),
])
def test_shape_errors_are_value_errors(fn: object, shape: tuple[int, ...], message: str) -> None:
    assert callable(fn)
    with pytest.raises(ValueError, match=message) as err:
        fn(torch.zeros(shape))
    assert f"got shape {shape}" in str(err.value)


def test_alpha_req_bad_fit_range() -> None:
    with pytest.raises(ValueError, match="k_min < k_max"):
        alpha_req(torch.randn(10, 4), k_min=3, k_max=3)


def test_registry_names_inputs_and_objectives() -> None:
    assert set(METRICS) == {"rankme", "lidar", "alpha_req"}
    assert {m.name: m.needs for m in METRICS.values()} == {
        "rankme": "features", "lidar": "views", "alpha_req": "features"}
    assert all(m.mode == "max" for m in METRICS.values())
    g = _gen(13)
    feats = _healthy(64, 8, g)
    out = METRICS["alpha_req"].compute(feats)
    assert set(out) == {"alpha_req", "alpha_req_score"}
    assert METRICS["alpha_req"].objective_key == "alpha_req_score"
    assert float(out["alpha_req_score"]) == float(alpha_req_score(alpha_req(feats)))
    ranks = METRICS["rankme"].compute(feats)
    assert list(ranks) == ["rankme"] and float(ranks["rankme"]) == float(rankme(feats))
    assert METRICS["lidar"].objective_key == "lidar"
    assert set(METRICS["lidar"].compute(_healthy_views(8, 2, 4, g))) == {"lidar"}
