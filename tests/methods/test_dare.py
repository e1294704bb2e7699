"""DARe (Tomer & Sharma, "Representation Learning Algorithms"): the Gaussian KL / JSD and the
decoupled contrastive loss against hand-computed values, torch.distributions and slow float64
loops; gradients through the reparameterisation; the method's head, clamp, determinism and
checkpoint; learning on digits and Fashion-MNIST."""

import functools
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sslsearch.methods.base import Step, Task
from sslsearch.methods.dare import (
    LOGVAR_MAX,
    Config,
    Method,
    dare_loss,
    decoupled_contrastive_loss,
    gaussian_jsd,
    gaussian_kl,
)
from sslsearch.methods.simclr import nt_xent_loss
from sslsearch.parts.networks import MLPEncoder
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------- slow references


def slow_kl(mu1: list[float], v1: list[float], mu2: list[float], v2: list[float]) -> float:
    """KL of two diagonal Gaussians given per-dimension means and VARIANCES (one sample)."""
    return sum(0.5 * (a / b + math.log(b / a) + (m2 - m1) ** 2 / b - 1)
               for m1, a, m2, b in zip(mu1, v1, mu2, v2, strict=True))


def slow_jsd(mu1: torch.Tensor, lv1: torch.Tensor, mu2: torch.Tensor, lv2: torch.Tensor) -> float:
    total = 0.0
    n = mu1.shape[0]
    for i in range(n):
        m1, m2 = mu1[i].double().tolist(), mu2[i].double().tolist()
        v1 = [math.exp(x) for x in lv1[i].double().tolist()]
        v2 = [math.exp(x) for x in lv2[i].double().tolist()]
        mm = [(a + b) / 2 for a, b in zip(m1, m2, strict=True)]
        # The moment-matched midpoint: the average variance plus the spread of the means.
        vm = [(a + b) / 2 + ((c - e) / 2) ** 2 for a, b, c, e in zip(v1, v2, m1, m2, strict=True)]
        total += 0.5 * slow_kl(m1, v1, mm, vm) + 0.5 * slow_kl(m2, v2, mm, vm)
    return total / n


def slow_decoupled(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    a = [v / v.norm() for v in z1.double()]
    b = [v / v.norm() for v in z2.double()]
    n = len(a)

    def one_direction(p: list[torch.Tensor], q: list[torch.Tensor]) -> float:
        total = 0.0
        for i in range(n):
            den = sum(math.exp(float(p[i] @ q[j]) / tau) for j in range(n) if j != i)
            total += -math.log(math.exp(float(p[i] @ q[i]) / tau) / den)
        return total / n

    return 0.5 * (one_direction(a, b) + one_direction(b, a))


def gaussians(n: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 2
    lv1, lv2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) - 1
    return mu1.double(), lv1.double(), mu2.double(), lv2.double()


# ----------------------------------------------------------------------------------- Gaussian KL


def test_kl_hand_computed_1d() -> None:
    # N(0, 1) ‖ N(1, 2): ½(1/2 + log 2 + 1/2 − 1) = ½ log 2.
    one = torch.tensor([[0.0]])
    got = gaussian_kl(one * 0, one * 0, one + 1, torch.log(one + 2))
    assert got.item() == pytest.approx(0.5 * math.log(2))


def test_kl_sums_dimensions_and_averages_the_batch() -> None:
    # Sample 0: two dimensions of the ½ log 2 case → log 2; sample 1: equal Gaussians → 0.
    mu1 = torch.zeros(2, 2)
    lv1 = torch.zeros(2, 2)
    mu2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    lv2 = torch.log(torch.tensor([[2.0, 2.0], [1.0, 1.0]]))
    assert gaussian_kl(mu1, lv1, mu2, lv2).item() == pytest.approx(math.log(2) / 2)


@pytest.mark.parametrize("n,d", [(1, 1), (5, 3), (16, 8)])
def test_kl_matches_torch_distributions(n: int, d: int) -> None:
    mu1, lv1, mu2, lv2 = gaussians(n, d, seed=n * d)
    want = kl_divergence(Normal(mu1, torch.exp(0.5 * lv1)), Normal(mu2, torch.exp(0.5 * lv2)))
    got = gaussian_kl(mu1, lv1, mu2, lv2)
    assert got.item() == pytest.approx(want.sum(dim=1).mean().item(), rel=1e-10)


def test_kl_of_a_gaussian_with_itself_is_zero() -> None:
    mu, lv, _, _ = gaussians(6, 4, seed=1)
    assert gaussian_kl(mu, lv, mu, lv).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_is_asymmetric_and_non_negative() -> None:
    mu1, lv1, mu2, lv2 = gaussians(6, 4, seed=2)
    forward, backward = gaussian_kl(mu1, lv1, mu2, lv2), gaussian_kl(mu2, lv2, mu1, lv1)
    assert forward.item() > 0 and backward.item() > 0
    assert forward.item() != pytest.approx(backward.item())


# ---------------------------------------------------------------------------------- Gaussian JSD


def test_jsd_hand_computed() -> None:
    # Equal unit variances, means 0 and 2: N_m = N(1, 1 + 1) = N(1, 2) (the midpoint's variance
    # holds the means' spread ((2 − 0)/2)² = 1); each KL = ½(1/2 + log 2 + 1/2 − 1) = ½ log 2, so
    # JSD = ½ log 2 ≈ 0.347 (the midpoint without the spread, N(1, 1), gave ½).
    zero = torch.zeros(1, 1)
    assert gaussian_jsd(zero, zero, zero + 2, zero).item() == pytest.approx(0.5 * math.log(2))
    # Means 0 and 2, variances 1 and 3: σ_m² = (1 + 3)/2 + 1 = 3.
    # KL(N₁‖N_m) = ½(1/3 + log 3 + 1/3 − 1), KL(N₂‖N_m) = ½(1 + 0 + 1/3 − 1) → JSD = ¼ log 3.
    want = 0.5 * 0.5 * (1 / 3 + math.log(3) + 1 / 3 - 1) + 0.5 * 0.5 * (1 / 3)
    assert want == pytest.approx(0.25 * math.log(3))
    got = gaussian_jsd(zero, zero, zero + 2, zero + math.log(3))
    assert got.item() == pytest.approx(want)
    # Equal means, variances 1 and 3: σ_m² = 2.
    # KL(N₁‖N_m) = ½(1/2 + log 2 − 1), KL(N₂‖N_m) = ½(3/2 + log(2/3) − 1).
    want = 0.5 * 0.5 * (0.5 + math.log(2) - 1) + 0.5 * 0.5 * (1.5 + math.log(2 / 3) - 1)
    assert gaussian_jsd(zero, zero, zero, zero + math.log(3)).item() == pytest.approx(want)


@pytest.mark.parametrize("n,d", [(1, 1), (4, 3), (9, 6)])
def test_jsd_matches_slow_loop(n: int, d: int) -> None:
    mu1, lv1, mu2, lv2 = gaussians(n, d, seed=10 + n * d)
    assert gaussian_jsd(mu1, lv1, mu2, lv2).item() == pytest.approx(
        slow_jsd(mu1, lv1, mu2, lv2), rel=1e-10)


def test_jsd_symmetric_non_negative_zero_on_equal() -> None:
    for seed in range(5):
        mu1, lv1, mu2, lv2 = gaussians(5, 4, seed=seed)
        a, b = gaussian_jsd(mu1, lv1, mu2, lv2), gaussian_jsd(mu2, lv2, mu1, lv1)
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
        assert a.item() > 0
        assert gaussian_jsd(mu1, lv1, mu1, lv1).item() == pytest.approx(0.0, abs=1e-12)


def test_jsd_per_dimension_closed_form() -> None:
    # With matched moments the Mahalanobis terms cancel: per dimension
    # JSD = ½ (log σ_m² − ½ (log σ₁² + log σ₂²)), summed over d, averaged over the batch.
    mu1, lv1, mu2, lv2 = gaussians(7, 5, seed=4)
    var_m = 0.5 * (lv1.exp() + lv2.exp()) + (0.5 * (mu1 - mu2)) ** 2
    want = (0.5 * (var_m.log() - 0.5 * (lv1 + lv2))).sum(dim=1).mean()
    assert gaussian_jsd(mu1, lv1, mu2, lv2).item() == pytest.approx(want.item(), rel=1e-12)


def test_jsd_gradient_is_finite_at_equal_means() -> None:
    # log((μ₁ − μ₂)²/4) is −∞ at equal means: the floor keeps the gradient at 0, not NaN.
    mu = torch.randn(3, 4, requires_grad=True)
    lv1 = torch.randn(3, 4, requires_grad=True)
    lv2 = torch.randn(3, 4, requires_grad=True)
    gaussian_jsd(mu, lv1, mu, lv2).backward()
    for t in (mu, lv1, lv2):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert mu.grad is not None and mu.grad.abs().max().item() == 0.0
    assert lv1.grad is not None and lv1.grad.abs().sum() > 0


# The TRUE JSD of two 1-D Gaussians (the mixture midpoint), by Monte Carlo in float64:
# ½ E_{x~N₁}[log p₁(x) − log m(x)] + ½ E_{x~N₂}[log p₂(x) − log m(x)], m = ½(p₁ + p₂).
# With 10⁶ samples per Gaussian (fixed seed) the standard error is ≤ 4e-4 for Δ ≤ 3σ.
MC_SAMPLES = 1_000_000


@functools.cache
def mc_jsd_1d(delta: float, var1: float = 1.0, var2: float = 1.0) -> tuple[float, float]:
    """(estimate, standard error) of JSD(N(0, var1), N(delta, var2))."""
    g = torch.Generator().manual_seed(0)
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    n1 = Normal(f64(0.0), f64(math.sqrt(var1)))
    n2 = Normal(f64(delta), f64(math.sqrt(var2)))
    estimate, variance = 0.0, 0.0
    for own in (n1, n2):
        x = own.loc + own.scale * torch.randn(MC_SAMPLES, generator=g, dtype=torch.float64)
        log_m = torch.logaddexp(n1.log_prob(x), n2.log_prob(x)) - math.log(2)
        term = own.log_prob(x) - log_m
        estimate += 0.5 * term.mean().item()
        variance += 0.25 * term.var().item() / MC_SAMPLES
    return estimate, math.sqrt(variance)


def jsd_1d(delta: float, var1: float = 1.0, var2: float = 1.0) -> float:
    """gaussian_jsd of N(0, var1) and N(delta, var2), one sample, one dimension, float64."""
    t = functools.partial(torch.full, (1, 1), dtype=torch.float64)
    return gaussian_jsd(t(0.0), t(math.log(var1)), t(delta), t(math.log(var2))).item()


# Δ/σ → how far the moment-matched JSD may be from the Monte-Carlo true JSD (measured: 0, −2e-4,
# −2e-4, +9.2e-3; MC 0, 0.0305, 0.1118, 0.3374; the approximation 0, 0.0303, 0.1116, 0.3466).
MC_TOLERANCE = {0.0: 1e-9, 0.5: 2e-3, 1.0: 2e-3, 2.0: 0.015}


@pytest.mark.parametrize("delta", sorted(MC_TOLERANCE))
def test_jsd_close_to_monte_carlo_true_jsd(delta: float) -> None:
    true, stderr = mc_jsd_1d(delta)
    assert stderr < 5e-4
    assert jsd_1d(delta) == pytest.approx(true, abs=MC_TOLERANCE[delta])


def test_jsd_at_three_sigma_far_closer_than_the_midpoint_without_spread() -> None:
    # Measured: MC 0.527; moment-matched ½ log(1 + 9/4) = 0.589; without the spread 9/8 = 1.125.
    true, _ = mc_jsd_1d(3.0)
    assert true == pytest.approx(0.527, abs=3e-3)
    new, old = jsd_1d(3.0), 9 / 8
    assert abs(new - true) < 0.1
    assert abs(new - true) < abs(old - true) / 5
    # The true JSD is bounded by log 2 per dimension; at 3σ the approximation is still below it
    # (it crosses log 2 at Δ = 2√3 σ ≈ 3.46σ), and far below the asked-for 2·log 2.
    assert new < math.log(2) < 2 * math.log(2)


@pytest.mark.parametrize("delta", [5.0, 10.0, 100.0])
def test_jsd_grows_like_log_delta_for_far_means(delta: float) -> None:
    # Known behaviour, documented in gaussian_jsd: for equal unit variances the moment-matched JSD
    # is ½ log(1 + Δ²/4) ~ log(Δ/2): unbounded, while the true JSD tends to log 2.
    assert jsd_1d(delta) == pytest.approx(0.5 * math.log1p(delta**2 / 4), rel=1e-12)
    assert jsd_1d(delta) > math.log(2)


@pytest.mark.parametrize("delta,true,approx", [(0.0, 0.0931, 0.1116), (1.0, 0.1288, 0.1592)])
def test_jsd_overestimates_unequal_variances(delta: float, true: float, approx: float) -> None:
    # σ₂ = 2σ₁: the moment-matched midpoint is +20 % even at equal means (documented numbers).
    mc, _ = mc_jsd_1d(delta, 1.0, 4.0)
    assert mc == pytest.approx(true, abs=2e-3)
    assert jsd_1d(delta, 1.0, 4.0) == pytest.approx(approx, abs=1e-4)
    assert jsd_1d(delta, 1.0, 4.0) > mc


def test_jsd_is_finite_at_the_logvar_clamp() -> None:
    # The extremes the method's clamp allows, in float32: no inf, no NaN.
    mu = torch.tensor([[0.0, 5.0]])
    lo, hi = torch.full((1, 2), -LOGVAR_MAX), torch.full((1, 2), LOGVAR_MAX)
    value = gaussian_jsd(mu, lo, -mu, hi)
    assert torch.isfinite(value)


# --------------------------------------------------------------------- decoupled contrastive


def test_decoupled_hand_computed_identical_orthogonal() -> None:
    # z1 = z2 = I_3, τ = 0.5: each anchor: −1/τ + log(2·e⁰) = log 2 − 2, both directions alike.
    z = torch.eye(3)
    assert decoupled_contrastive_loss(z, z.clone(), 0.5).item() == pytest.approx(math.log(2) - 2)


def test_decoupled_hand_computed_batch_of_two() -> None:
    # z1 = [e1, e2], z2 = [e1, (e1+e2)/√2], τ = 1: s = [[1, c], [0, c]] with c = 1/√2.
    # z1→z2: i=0: −1 + c, i=1: −c + 0 → mean −½.  z2→z1 (sᵀ): i=0: −1 + 0, i=1: −c + c → −½.
    z1 = torch.eye(2)
    z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert decoupled_contrastive_loss(z1, z2, 1.0).item() == pytest.approx(-0.5)
    assert decoupled_contrastive_loss(z1, z2, 0.25).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("n", [2, 7])
def test_decoupled_matches_slow_loop(n: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    assert decoupled_contrastive_loss(z1.double(), z2.double(), tau).item() == pytest.approx(
        slow_decoupled(z1, z2, tau), rel=1e-9)


def test_decoupled_identical_views_match_slow_loop() -> None:
    z = torch.randn(6, 4, dtype=torch.float64)
    assert decoupled_contrastive_loss(z, z.clone(), 0.3).item() == pytest.approx(
        slow_decoupled(z, z, 0.3), rel=1e-9)


def test_decoupled_batch_of_one_is_rejected() -> None:
    # The denominator Σ_{j≠i} is empty for N = 1: log 0, an infinite loss.
    with pytest.raises(ValueError, match="at least 2"):
        decoupled_contrastive_loss(torch.randn(1, 4), torch.randn(1, 4), 0.2)


def test_decoupled_temperature_extremes() -> None:
    z = torch.eye(4)
    # τ → 0 with aligned positives, orthogonal negatives: exactly log(N − 1) − 1/τ, still finite.
    cold = decoupled_contrastive_loss(z, z.clone(), 0.01)
    assert torch.isfinite(cold) and cold.item() == pytest.approx(math.log(3) - 100, rel=1e-6)
    # τ → ∞: every logit → 0, the loss → log(N − 1) whatever the embeddings.
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert decoupled_contrastive_loss(z1, z2, 1e4).item() == pytest.approx(math.log(7), abs=1e-3)
    # Very cold on random embeddings: logsumexp keeps it finite.
    assert torch.isfinite(decoupled_contrastive_loss(z1, z2, 1e-4))


def test_decoupled_scale_invariant_and_symmetric() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    base = decoupled_contrastive_loss(z1, z2, 0.5)
    torch.testing.assert_close(decoupled_contrastive_loss(3 * z1, 0.5 * z2, 0.5), base)
    torch.testing.assert_close(decoupled_contrastive_loss(z2, z1, 0.5), base)


def test_decoupled_gradient_reaches_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    decoupled_contrastive_loss(z1, z2, 0.2).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ dare_loss


def leaves(n: int = 6, d: int = 4, seed: int = 0) -> list[torch.Tensor]:
    return [t.float().requires_grad_() for t in gaussians(n, d, seed)]


def test_dare_loss_combines_the_terms() -> None:
    mu1, lv1, mu2, lv2 = leaves()
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    total, con, jsd = dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.2, 0.3)
    torch.testing.assert_close(con, decoupled_contrastive_loss(z1, z2, 0.2))
    torch.testing.assert_close(jsd, gaussian_jsd(mu1, lv1, mu2, lv2))
    torch.testing.assert_close(total, con + 0.3 * jsd)
    total0, con0, _ = dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.2, 0.0)
    torch.testing.assert_close(total0, con0)


def test_dare_loss_ntxent_option() -> None:
    mu1, lv1, mu2, lv2 = leaves()
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    total, con, jsd = dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.5, 0.1, contrastive="ntxent")
    torch.testing.assert_close(con, nt_xent_loss(z1, z2, 0.5))
    torch.testing.assert_close(total, con + 0.1 * jsd)
    with pytest.raises(ValueError, match="contrastive"):
        dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.5, 0.1, contrastive="infonce")


def test_jsd_gradient_reaches_mu_and_logvar_of_both_views() -> None:
    mu1, lv1, mu2, lv2 = leaves()
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)  # fixed samples: only the JSD depends on μ, σ
    _, _, jsd = dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.2, 1.0)
    jsd.backward()
    for t in (mu1, lv1, mu2, lv2):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_contrastive_gradient_flows_through_the_reparameterisation() -> None:
    mu1, lv1, mu2, lv2 = leaves()
    eps1, eps2 = torch.randn(6, 4), torch.randn(6, 4)
    z1 = mu1 + torch.exp(0.5 * lv1) * eps1
    z2 = mu2 + torch.exp(0.5 * lv2) * eps2
    total, _, _ = dare_loss(z1, z2, mu1, lv1, mu2, lv2, 0.2, 0.0)  # λ_D = 0: contrastive only
    total.backward()
    for t in (mu1, lv1, mu2, lv2):
        assert t.grad is not None and t.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- Method


def tabular_method(**cfg: object) -> Method:
    torch.manual_seed(0)
    return Method(Config(proj_hidden_dim=16, proj_output_dim=6, **cfg),  # type: ignore[arg-type]
                  MLPEncoder(in_features=10, width=12), Task("tabular", 3))


STEP = Step(step=0, total_steps=10, epoch=0, steps_per_epoch=10)


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, x + 0.1 * torch.randn(n, 10, generator=g), torch.zeros(n, dtype=torch.long)


def test_config_checks() -> None:
    Config().check()
    for bad in ({"temperature": 0.0}, {"lambda_jsd": -1.0}, {"contrastive": "infonce"},
                {"proj_output_dim": 0}):
        with pytest.raises(ValueError):
            Config(**bad).check()  # type: ignore[arg-type]


def test_forward_outputs_and_gradients() -> None:
    m = tabular_method(lambda_jsd=0.5)
    out = m(*batch(), STEP)
    assert set(out) == {"loss", "contrastive", "jsd", "logvar"}
    torch.testing.assert_close(out["loss"], out["contrastive"] + 0.5 * out["jsd"])
    assert not out["logvar"].requires_grad
    out["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Both halves of the last layer (μ rows and log σ² rows) receive gradient.
    last = m.projector[-1]
    assert isinstance(last, torch.nn.Linear) and last.weight.grad is not None
    d = last.out_features // 2
    assert last.weight.grad[:d].abs().sum() > 0 and last.weight.grad[d:].abs().sum() > 0


def test_embed_is_mu_and_deterministic() -> None:
    m = tabular_method().eval()
    x, _, _ = batch()
    mu, _ = m.gaussian(x)
    torch.testing.assert_close(m.embed(x), mu)
    torch.testing.assert_close(m.embed(x), m.embed(x))
    assert m.embed(x).shape == (8, 6)


def test_sampling_uses_the_global_rng() -> None:
    m = tabular_method()
    x1, x2, y = batch()
    torch.manual_seed(5)
    a = m(x1, x2, y, STEP)["loss"]
    torch.manual_seed(5)
    b = m(x1, x2, y, STEP)["loss"]
    c = m(x1, x2, y, STEP)["loss"]  # the RNG has moved on: a different ε
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_logvar_is_clamped() -> None:
    m = tabular_method()
    last = m.projector[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias[6:] = 200.0  # exp(200) overflows float32 without the clamp
    x1, x2, y = batch()
    assert m.gaussian(x1)[1].max().item() == LOGVAR_MAX
    out = m(x1, x2, y, STEP)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_bf16_autocast_gives_float32_loss() -> None:
    m = tabular_method()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(*batch(), STEP)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_state_round_trips_through_checkpoint(tmp_path: Path) -> None:
    m = tabular_method()
    m(*batch(), STEP)  # moves the BN running statistics away from their initial values
    save_checkpoint(tmp_path, {"model": m.state_dict()})
    state = load_checkpoint(tmp_path)
    assert state is not None
    torch.manual_seed(99)
    fresh = Method(m.cfg, MLPEncoder(in_features=10, width=12), Task("tabular", 3))
    fresh.load_state_dict(state["model"])
    for key, value in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x1, x2, y = batch(seed=1)
    torch.manual_seed(7)
    a = m(x1, x2, y, STEP)["loss"]
    torch.manual_seed(7)
    torch.testing.assert_close(fresh(x1, x2, y, STEP)["loss"], a)
