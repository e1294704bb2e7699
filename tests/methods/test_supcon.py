"""SupCon's loss against hand-computed values, a slow loop and NT-Xent; the supervised flag."""

import dataclasses
import math

import pytest
import torch

from sslsearch.methods import supcon
from sslsearch.methods.base import Step, Task
from sslsearch.methods.simclr import nt_xent_loss
from sslsearch.methods.supcon import Config, Method, supcon_loss
from sslsearch.parts.networks import MLPEncoder


def slow_supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    lab = labels.tolist() * 2
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        pos = [p for p in range(n2) if p != i and lab[p] == lab[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / den) for p in pos) / len(pos)
    return total / n2


def test_hand_computed_one_class() -> None:
    # z = [e1, e2, e1, e2], one class, τ = 1. Anchor e1 sees e2 (s=0), e1 (s=1), e2 (s=0): all three
    # are positives, so ℓ = −1/3·[−log(e+2) + 1 − log(e+2) − log(e+2)] = log(e + 2) − 1/3.
    z = torch.eye(2)
    got = supcon_loss(z, z.clone(), torch.tensor([0, 0]), 1.0)
    assert got.item() == pytest.approx(math.log(math.e + 2) - 1 / 3)


def test_hand_computed_distinct_labels_is_nt_xent_value() -> None:
    # The same views with two classes: the positive is the other view alone, ℓ = log(1 + 2/e).
    z = torch.eye(2)
    got = supcon_loss(z, z.clone(), torch.tensor([0, 1]), 1.0)
    assert got.item() == pytest.approx(math.log(1 + 2 / math.e))


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("n", [2, 7, 12])
def test_matches_slow_loop(n: int, tau: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    assert supcon_loss(z1.double(), z2.double(), labels, tau).item() == pytest.approx(
        slow_supcon(z1, z2, labels, tau), rel=1e-9)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_all_labels_distinct_equals_nt_xent(tau: float) -> None:
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(9, 6, generator=g).double(), torch.randn(9, 6, generator=g).double()
    labels = torch.randperm(9, generator=g) * 7  # distinct, not 0..N−1
    torch.testing.assert_close(supcon_loss(z1, z2, labels, tau), nt_xent_loss(z1, z2, tau))


def test_one_class_identical_embeddings_is_uniform() -> None:
    # All 2N views equal: every one of the 2N−1 others is a positive with probability 1/(2N−1).
    z = torch.ones(4, 3)
    got = supcon_loss(z, z, torch.zeros(4, dtype=torch.long), 0.5)
    assert got.item() == pytest.approx(math.log(7), rel=1e-6)


def test_temperature_extremes() -> None:
    # Two classes of two samples; within a class identical, across classes orthogonal.
    # τ → 0: the 3 positives share all the mass, ℓ → log 3. τ → ∞: uniform over 7 others, ℓ → log 7.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert supcon_loss(z, z, labels, 0.01).item() == pytest.approx(math.log(3), rel=1e-12)
    assert supcon_loss(z, z, labels, 1e4).item() == pytest.approx(math.log(7), rel=1e-4)
    tiny = supcon_loss(torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 2, (8,)), 1e-3)
    assert torch.isfinite(tiny)


def test_scale_invariant_and_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    base = supcon_loss(z1, z2, labels, 0.5)
    torch.testing.assert_close(supcon_loss(3 * z1, 0.5 * z2, labels, 0.5), base)
    torch.testing.assert_close(supcon_loss(z2, z1, labels, 0.5), base)


def test_half_precision_is_computed_in_float32_even_under_autocast() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 8, generator=g).bfloat16(), torch.randn(16, 8, generator=g).bfloat16()
    labels = torch.randint(0, 4, (16,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = supcon_loss(z1, z2, labels, 0.05)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, supcon_loss(z1.float(), z2.float(), labels, 0.05))


def test_gradient_reaches_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    loss = supcon_loss(z1, z2, torch.tensor([0, 1, 0, 1]), 0.2)
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert z2.grad is not None and torch.isfinite(z2.grad).all() and z2.grad.abs().sum() > 0


def test_method_is_supervised_and_uses_labels() -> None:
    assert Method.supervised and Config.supervised
    assert "supervised" not in {f.name for f in dataclasses.fields(Config)}  # not a setting
    torch.manual_seed(0)
    method = Method(Config(proj_hidden_dim=16, proj_output_dim=8), MLPEncoder(5, 16),
                    Task("tabular", 3))
    x1, x2 = torch.randn(8, 5), torch.randn(8, 5)
    step = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)
    a = method(x1, x2, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), step)["loss"]
    b = method(x1, x2, torch.arange(8), step)["loss"]
    assert not torch.equal(a, b)
    assert supcon.__doc__ and "Khosla" in supcon.__doc__


def test_config_checks() -> None:
    Config().check()
    with pytest.raises(ValueError):
        Config(temperature=0.0).check()
