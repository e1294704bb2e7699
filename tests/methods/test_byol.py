"""BYOL: the regression loss against hand values and a slow loop, the EMA target's gradient
isolation, momentum schedule and checkpointing, and the learning check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sslsearch.methods.base import Step, Task
from sslsearch.methods.byol import Config, Method, byol_loss
from sslsearch.parts.networks import MLPEncoder
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint


def slow_byol(p: torch.Tensor, z: torch.Tensor) -> float:
    a, b = p.double().tolist(), z.double().tolist()
    total = 0.0
    for u, v in zip(a, b, strict=True):
        nu = math.sqrt(sum(x * x for x in u))
        nv = math.sqrt(sum(x * x for x in v))
        # ‖ū − v̄‖², written out rather than through the 2 − 2·cos identity the code uses.
        total += sum((x / nu - y / nv) ** 2 for x, y in zip(u, v, strict=True))
    return total / len(a)


def test_hand_computed() -> None:
    # Row 1: p = (1, 0), z̃ = (0, 3): orthogonal → 2 − 0 = 2.
    # Row 2: p = (1, 1), z̃ = (2, 0): cos = 1/√2 → 2 − √2.
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    assert byol_loss(p, z).item() == pytest.approx((2 + 2 - math.sqrt(2)) / 2, rel=1e-6)


@pytest.mark.parametrize("n,d", [(2, 3), (7, 5), (16, 8)])
def test_matches_slow_loop(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(n * d)
    p, z = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 3
    assert byol_loss(p.double(), z.double()).item() == pytest.approx(slow_byol(p, z), rel=1e-12)


def test_edge_values() -> None:
    z = torch.randn(2, 4)
    assert byol_loss(z, 5 * z).item() == pytest.approx(0.0, abs=1e-6)  # identical directions
    assert byol_loss(z, -z).item() == pytest.approx(4.0, rel=1e-6)  # opposite: the maximum
    # Rows are paired, not cross-compared: a permuted target changes the value.
    p = torch.eye(4)
    assert byol_loss(p, p.roll(1, dims=0)).item() == pytest.approx(2.0)


def test_bf16_inputs_computed_in_float32() -> None:
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    out = byol_loss(p.bfloat16(), z.bfloat16())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(byol_loss(p.bfloat16().float(), z.bfloat16().float()).item(),
                                       rel=1e-6)


def test_loss_gradient_reaches_prediction() -> None:
    p = torch.randn(4, 3, requires_grad=True)
    byol_loss(p, torch.randn(4, 3)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# The method: a tiny MLP encoder keeps these fast.

STEP = Step(step=3, total_steps=10, epoch=0, steps_per_epoch=10)


def tiny_method(seed: int = 0, **cfg: object) -> Method:
    torch.manual_seed(seed)
    base = {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16}
    base.update(cfg)
    return Method(Config(**base), MLPEncoder(6, width=12, depth=2), Task("tabular", 3))  # type: ignore[arg-type]


def views(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)


def train_step(method: Method, opt: torch.optim.Optimizer, step: Step = STEP) -> torch.Tensor:
    x1, x2 = views(step.step)
    loss = method(x1, x2, torch.zeros(10, dtype=torch.long), step)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step(step)
    return loss.detach()


def target_params(method: Method) -> list[torch.Tensor]:
    return [*method.target_backbone.parameters(), *method.target_projector.parameters()]


def online_params(method: Method) -> list[torch.Tensor]:
    return [*method.backbone.parameters(), *method.projector.parameters()]


def test_target_starts_equal_and_frozen() -> None:
    m = tiny_method()
    for t, o in zip(target_params(m), online_params(m), strict=True):
        assert torch.equal(t, o)
        assert not t.requires_grad
    assert not hasattr(m, "target_predictor")  # the target network has no predictor


def test_gradients_reach_online_not_target() -> None:
    m = tiny_method()
    x1, x2 = views()
    out = m(x1, x2, torch.zeros(10, dtype=torch.long), STEP)
    assert out["loss"].ndim == 0
    out["loss"].backward()
    for p in target_params(m):
        assert p.grad is None
    for module in (m.backbone, m.projector, m.predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_symmetrised_loss_is_sum_of_both_directions() -> None:
    m = tiny_method()
    m.eval()  # BN in eval mode: the same function for every call below
    x1, x2 = views()
    with torch.no_grad():
        got = m(x1, x2, torch.zeros(10, dtype=torch.long), STEP)["loss"]
        p1, p2 = (m.predictor(m.projector(m.backbone(x))) for x in (x1, x2))
        t1, t2 = (m.target_projector(m.target_backbone(x)) for x in (x1, x2))
    torch.testing.assert_close(got, byol_loss(p1, t2) + byol_loss(p2, t1))


def test_ema_moves_target_with_cosine_momentum() -> None:
    m = tiny_method(m_base=0.9)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    old_target = [p.clone() for p in target_params(m)]
    train_step(m, opt, STEP)
    # BYOL: τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 at k = 3, K = 10.
    mom = 1 - (1 - 0.9) * (math.cos(math.pi * 0.3) + 1) / 2
    moved = False
    for t, old, o in zip(target_params(m), old_target, online_params(m), strict=True):
        torch.testing.assert_close(t, mom * old + (1 - mom) * o, rtol=1e-6, atol=1e-7)
        moved |= not torch.equal(t, old)
    assert moved, "the target did not move"
    # BN running statistics are copied from the online network, not averaged.
    for tb, ob in zip(m.target_backbone.buffers(), m.backbone.buffers(), strict=True):
        assert torch.equal(tb, ob)


def test_momentum_reaches_one_at_the_end() -> None:
    m = tiny_method()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    before = [p.clone() for p in target_params(m)]
    train_step(m, opt, Step(step=10, total_steps=10, epoch=0, steps_per_epoch=10))
    for t, old in zip(target_params(m), before, strict=True):
        assert torch.equal(t, old)


def test_ema_target_round_trips_through_checkpoint(tmp_path: Path) -> None:
    m = tiny_method()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for k in range(3):
        train_step(m, opt, Step(step=k, total_steps=10, epoch=0, steps_per_epoch=10))
    # The target differs from the online net, so the checkpoint must hold it separately.
    assert not all(torch.equal(t, o) for t, o in zip(target_params(m), online_params(m),
                                                     strict=True))
    state = m.state_dict()
    assert any(k.startswith("target_backbone.") for k in state)
    assert any(k.startswith("target_projector.") for k in state)
    save_checkpoint(tmp_path, {"model": state})
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    fresh = tiny_method(seed=99)
    fresh.load_state_dict(loaded["model"])
    for t, want in zip(target_params(fresh), target_params(m), strict=True):
        assert torch.equal(t, want)
        assert not t.requires_grad  # still frozen after loading
    # The restored method continues exactly as the original.
    x1, x2 = views(7)
    y = torch.zeros(10, dtype=torch.long)
    torch.testing.assert_close(fresh(x1, x2, y, STEP)["loss"], m(x1, x2, y, STEP)["loss"])


def test_config_check() -> None:
    Config(m_base=0.9).check()
    with pytest.raises(ValueError, match="m_base"):
        Config(m_base=1.5).check()
    with pytest.raises(ValueError, match="pred_hidden_dim"):
        Config(pred_hidden_dim=0).check()
