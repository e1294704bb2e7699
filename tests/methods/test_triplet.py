"""The triplet loss against hand-built mining cases and a slow loop; the supervised switch."""

import math

import pytest
import torch

from sslsearch.methods.base import Method as BaseMethod
from sslsearch.methods.base import Step, Task
from sslsearch.methods.triplet import Config, Method, triplet_loss
from sslsearch.parts.networks import MLPEncoder


def slow_triplet(z1: torch.Tensor, z2: torch.Tensor, margin: float,
                 labels: torch.Tensor | None = None, mining: str = "hardest") -> float:
    a = [v / v.norm() for v in z1.double()]
    b = [v / v.norm() for v in z2.double()]
    n = len(a)
    lab = labels.tolist() if labels is not None else list(range(n))  # no labels: one class each
    total = 0.0
    for i in range(n):
        dist = [float(((a[i] - b[j]) ** 2).sum()) for j in range(n)]
        d_ap = max(dist[j] for j in range(n) if lab[j] == lab[i])
        negs = [dist[j] for j in range(n) if lab[j] != lab[i]]
        if not negs:
            continue
        d_an = min(negs)
        if mining == "semihard":
            band = [d for d in negs if d_ap < d < d_ap + margin]
            if band:
                d_an = min(band)
        total += max(0.0, d_ap - d_an + margin)
    return total / n


def unit(*angles_deg: float, dim: int = 3) -> torch.Tensor:
    """Rows at the given angles in the (e1, e2) plane, padded with zeros to ``dim``."""
    rows = [[math.cos(math.radians(t)), math.sin(math.radians(t))] + [0.0] * (dim - 2)
            for t in angles_deg]
    return torch.tensor(rows, dtype=torch.float64)


def sq(deg: float) -> float:
    """Squared distance between unit vectors ``deg`` degrees apart."""
    return 2 - 2 * math.cos(math.radians(deg))


def test_hardest_and_semihard_pick_the_right_negative() -> None:
    # Anchor 0 at 0°, its positive at 60° (d_ap = 1); the other second views at 30° (closer than the
    # positive: the hardest), 75° (d = 1.48, inside the band (1, 1 + 0.5): the semi-hard one) and
    # 90° (d = 2, outside the band). Anchors 1–3 equal their positives (d_ap = 0), so both minings
    # pick their closest negative: 30° away for anchor 1, 15° for anchors 2 and 3.
    m = 0.5
    z1, z2 = unit(0, 30, 75, 90), unit(60, 30, 75, 90)
    others = (m - sq(30)) + 2 * (m - sq(15))
    hardest = (1 - sq(30) + m + others) / 4
    semihard = (1 - sq(75) + m + others) / 4
    assert triplet_loss(z1, z2, m, mining="hardest").item() == pytest.approx(hardest, rel=1e-12)
    assert triplet_loss(z1, z2, m, mining="semihard").item() == pytest.approx(semihard, rel=1e-12)


def test_semihard_falls_back_to_hardest_when_the_band_is_empty() -> None:
    # Anchor 0: positive at 60° (d_ap = 1), negatives at 30° (d < d_ap) and 90° (d = 2 > d_ap + m):
    # the band is empty, so semi-hard takes the hardest (30°), not the closest farther one (90°).
    m = 0.5
    z1, z2 = unit(0, 30, 90), unit(60, 30, 90)
    want = (1 - sq(30) + m + (m - sq(30)) + (m - sq(30))) / 3
    for mining in ("hardest", "semihard"):
        assert triplet_loss(z1, z2, m, mining=mining).item() == pytest.approx(want, rel=1e-12)


def test_labels_choose_the_hardest_same_label_positive() -> None:
    # labels [0, 0, 1]; z1 = [e1, e2, e3], z2 = [e1, e2, e3]. With labels anchor 0's positive is the
    # farther of z2_0 (d = 0) and z2_1 (d = 2), its negative z2_2 (d = 2): ℓ = m; same for anchor 1;
    # anchor 2 (d_ap = 0, d_an = 2) gives 0. Without labels every anchor has d_ap = 0, d_an = 2: 0.
    m = 0.3
    z = torch.eye(3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    for mining in ("hardest", "semihard"):
        assert triplet_loss(z, z, m, labels, mining).item() == pytest.approx(2 * m / 3)
        assert triplet_loss(z, z, m, None, mining).item() == 0.0


@pytest.mark.parametrize("mining", ["hardest", "semihard"])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("n,margin", [(2, 0.2), (7, 0.5), (16, 1.0)])
def test_matches_slow_loop(n: int, margin: float, with_labels: bool, mining: str) -> None:
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g) if with_labels else None
    got = triplet_loss(z1.double(), z2.double(), margin, labels, mining).item()
    assert got == pytest.approx(slow_triplet(z1, z2, margin, labels, mining), rel=1e-9, abs=1e-12)


def test_semihard_differs_from_hardest_on_random_data() -> None:
    # Guards against the band never being used (the slow loop would share such a bug).
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 4, generator=g)
    z2 = z1 + 0.5 * torch.randn(32, 4, generator=g)
    assert triplet_loss(z1, z2, 0.5, mining="semihard") < triplet_loss(z1, z2, 0.5)


def test_margin_zero_with_perfect_separation_is_zero() -> None:
    z = torch.eye(5)
    for mining in ("hardest", "semihard"):
        assert triplet_loss(z, z.clone(), 0.0, mining=mining).item() == 0.0
    # Two tight, well-separated classes with labels: every d_ap < every d_an.
    z1 = torch.tensor([[1.0, 0.01], [1.0, -0.01], [0.01, 1.0], [-0.01, 1.0]])
    assert triplet_loss(z1, z1.clone(), 0.0, torch.tensor([0, 0, 1, 1])).item() == 0.0


def test_batch_of_two_and_identical_views() -> None:
    # Identical orthogonal views: d_ap = 0, d_an = 2 → ℓ = max(0, m − 2).
    z = torch.eye(2)
    assert triplet_loss(z, z, 0.2).item() == 0.0
    assert triplet_loss(z, z, 3.0).item() == pytest.approx(1.0)
    # Views swapped: the positive is the far one, d_ap = 2, d_an = 0 → 2 + m.
    assert triplet_loss(z, z.flip(0), 0.2).item() == pytest.approx(2.2)


def test_one_class_has_no_negative_and_gives_zero_without_nan() -> None:
    z1 = torch.randn(6, 3, requires_grad=True)
    z2 = torch.randn(6, 3, requires_grad=True)
    loss = triplet_loss(z1, z2, 0.2, torch.zeros(6, dtype=torch.long), "semihard")
    loss.backward()
    assert loss.item() == 0.0
    assert z1.grad is not None and torch.equal(z1.grad, torch.zeros_like(z1))


def test_gradient_reaches_only_the_mined_triplets() -> None:
    # The case of the first test with m = 0.01: only anchor 0 violates the margin (d_ap = 1 against
    # its hardest negative at 30°, d = 0.27); anchors 1–3 have d_ap = 0 < d_an − m. So the gradient
    # reaches z1_0, its positive z2_0 and its mined negative z2_1, and nothing else.
    z1, z2 = unit(0, 30, 75, 90), unit(60, 30, 75, 90)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    triplet_loss(z1, z2, 0.01).backward()
    assert z1.grad is not None and z2.grad is not None
    assert z1.grad[0].abs().sum() > 0 and z1.grad[1:].abs().sum() == 0
    assert z2.grad[:2].abs().sum(dim=1).min() > 0 and z2.grad[2:].abs().sum() == 0


def test_invalid_mining_raises() -> None:
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(torch.randn(4, 3), torch.randn(4, 3), 0.2, mining="easy")
    with pytest.raises(ValueError):
        Config(mining="easy").check()
    with pytest.raises(ValueError):
        Config(margin=-0.1).check()
    Config().check()


def test_half_precision_is_computed_in_float32_even_under_autocast() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 8, generator=g).bfloat16(), torch.randn(16, 8, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = triplet_loss(z1, z2, 0.2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, triplet_loss(z1.float(), z2.float(), 0.2))


@pytest.mark.parametrize("use_labels", [False, True])
def test_supervised_follows_use_labels(use_labels: bool) -> None:
    torch.manual_seed(0)
    cfg = Config(use_labels=use_labels, proj_hidden_dim=16, proj_output_dim=8)
    method = Method(cfg, MLPEncoder(5, 16), Task("tabular", 3))
    assert method.supervised is use_labels
    assert BaseMethod.supervised is False and Method.supervised is False  # the class is untouched
    x1, x2 = torch.randn(8, 5), torch.randn(8, 5)
    step = Step(step=0, total_steps=1, epoch=0, steps_per_epoch=1)
    a = method(x1, x2, torch.zeros(8, dtype=torch.long), step)["loss"]
    b = method(x1, x2, torch.arange(8), step)["loss"]
    if use_labels:  # one class has no negative (loss 0); distinct labels are the SSL case
        assert a.item() == 0.0 and b.item() > 0
    else:  # the labels are ignored
        assert torch.equal(a, b)
