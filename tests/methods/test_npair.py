"""N-pair loss (i-Mix's baseline) by hand and against a slow, obviously-correct loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslsearch.methods import npair
from sslsearch.methods.base import Step, Task
from sslsearch.methods.npair import npair_loss
from sslsearch.parts.networks import build_backbone

STEP = Step(step=0, total_steps=10, epoch=0, steps_per_epoch=10)


def slow_npair(z1: torch.Tensor, z2: torch.Tensor, tau: float,
               targets: torch.Tensor | None = None) -> float:
    f = [v / v.norm() for v in z1.double()]
    g = [v / v.norm() for v in z2.double()]
    n = len(f)
    total = 0.0
    for i in range(n):
        den = sum(math.exp(float(f[i] @ g[k]) / tau) for k in range(n))
        for j in range(n):
            v = (1.0 if i == j else 0.0) if targets is None else float(targets[i, j])
            total += -v * math.log(math.exp(float(f[i] @ g[j]) / tau) / den)
    return total / n


def test_hand_computed_orthogonal_pair() -> None:
    # z1 = z2 = [e1, e2], τ = 1: each anchor sees its positive (s = 1) and one orthogonal
    # negative (s = 0) of the other view, and never itself: ℓ = −log(e/(e + 1)) = log(1 + 1/e).
    z = torch.eye(2)
    assert npair_loss(z, z.clone(), 1.0).item() == pytest.approx(math.log(1 + 1 / math.e))
    # Soft label ½/½: ℓ = −½ log(e/(e+1)) − ½ log(1/(e+1)) = log(e + 1) − ½.
    half = torch.full((2, 2), 0.5)
    assert npair_loss(z, z.clone(), 1.0, half).item() == pytest.approx(math.log(math.e + 1) - 0.5)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("n", [2, 7])
def test_matches_slow_loop(n: int, tau: float, soft: bool) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    targets = torch.rand(n, n, generator=g).double().softmax(dim=1) if soft else None
    got = npair_loss(z1.double(), z2.double(), tau, targets).item()
    assert got == pytest.approx(slow_npair(z1, z2, tau, targets), rel=1e-9)


def test_default_targets_are_the_batch_index() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.3
    torch.testing.assert_close(npair_loss(z1, z2, 0.3), F.cross_entropy(logits, torch.arange(6)))
    torch.testing.assert_close(npair_loss(z1, z2, 0.3, torch.eye(6)), npair_loss(z1, z2, 0.3))


def test_scale_invariant_one_directional() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    base = npair_loss(z1, z2, 0.5)
    torch.testing.assert_close(npair_loss(3 * z1, 0.5 * z2, 0.5), base)
    # Anchors from view 1 only: swapping the views is a different loss in general.
    assert not torch.allclose(npair_loss(z2, z1, 0.5), base)


def test_identical_views_low_temperature_near_zero_high_temperature_log_n() -> None:
    z = torch.eye(4)
    assert npair_loss(z, z, 0.01).item() < 1e-6
    # τ → ∞: all N logits equal, the loss tends to log N.
    assert npair_loss(z, z, 1e6).item() == pytest.approx(math.log(4), rel=1e-5)


def test_batch_of_two_and_one() -> None:
    z1, z2 = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.isfinite(npair_loss(z1, z2, 0.2))
    assert npair_loss(z1[:1], z2[:1], 0.2).item() == pytest.approx(0.0, abs=1e-7)  # one logit


def test_gradient_reaches_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    npair_loss(z1, z2, 0.2).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0


def test_method_is_the_symmetrised_loss_on_projections() -> None:
    torch.manual_seed(0)
    cfg = npair.Config(temperature=0.3, proj_hidden_dim=16, proj_output_dim=8)
    method = npair.Method(cfg, build_backbone("mlp", in_channels=6, image_size=0, width=16),
                          Task("tabular", 3))
    x1, x2 = torch.randn(10, 6), torch.randn(10, 6)
    loss = method(x1, x2, torch.zeros(10, dtype=torch.long), STEP)["loss"]
    with torch.no_grad():  # train-mode BN: the same batch gives the same projections
        z1 = method.projector(method.backbone(x1))
        z2 = method.projector(method.backbone(x2))
    expected = 0.5 * (npair_loss(z1, z2, 0.3) + npair_loss(z2, z1, 0.3))
    torch.testing.assert_close(loss.detach(), expected)


def test_config_check() -> None:
    with pytest.raises(ValueError, match="temperature"):
        npair.Config(temperature=0.0).check()
    npair.Config().check()
