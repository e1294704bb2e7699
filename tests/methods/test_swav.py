"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against hand-computed values and slow,
obviously-correct loops; prototype freezing and normalisation; the queue; learning on digits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from sslsearch.methods.base import Step, Task
from sslsearch.methods.swav import Config, Method, sinkhorn, swav_loss
from sslsearch.parts.networks import SmallCNN
from sslsearch.parts.optim import build_optimizer
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint


def slow_sinkhorn(scores: Tensor, eps: float, iterations: int) -> list[list[float]]:
    """The official ``distributed_sinkhorn`` (one device), loop by loop in float64."""
    s = scores.double().tolist()
    b, k = len(s), len(s[0])
    q = [[math.exp(s[j][i] / eps) for j in range(b)] for i in range(k)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for i in range(k):
            r = sum(q[i])
            q[i] = [v / r / k for v in q[i]]
        for j in range(b):
            c = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] = q[i][j] / c / b
    return [[q[i][j] * b for i in range(k)] for j in range(b)]  # B x K


def slow_swav(st: Tensor, ss: Tensor, qt: Tensor, qs: Tensor, tau: float) -> float:
    def ell(scores: list[list[float]], q: list[list[float]]) -> float:
        total = 0.0
        for row, code in zip(scores, q, strict=True):
            den = sum(math.exp(v / tau) for v in row)
            total -= sum(c * math.log(math.exp(v / tau) / den)
                         for v, c in zip(row, code, strict=True))
        return total / len(scores)

    a, b = st.double().tolist(), ss.double().tolist()
    return ell(a, qs.double().tolist()) + ell(b, qt.double().tolist())


def unit_scores(b: int, k: int, seed: int, d: int = 6) -> Tensor:
    """Cosine scores z·c of random unit z (B × d) and unit prototypes (K × d), like the method's."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T


# ----------------------------------------------------------------------------------- sinkhorn


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1, 1.0])
@pytest.mark.parametrize("b,k,iters", [(2, 3, 3), (7, 4, 3), (12, 5, 1), (5, 9, 10)])
def test_sinkhorn_matches_slow_loop(b: int, k: int, iters: int, eps: float) -> None:
    s = unit_scores(b, k, seed=b * k + iters)
    want = torch.tensor(slow_sinkhorn(s, eps, iters), dtype=torch.float64)
    got = sinkhorn(s.double(), eps, iters)
    assert got.shape == (b, k)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_sinkhorn_hand_computed() -> None:
    # B = K = 2, ε = 1, scores [[1, 0], [0, 0]]: Q = [[e, 1], [1, 1]] (K × B, here symmetric).
    # Rows to 1/2: [[e, 1]/(e+1), [1, 1]/2]/2; columns to 1/2 then ×B: column 0 = [e/(e+1), 1/2]
    # normalised → [2e/(3e+1), (e+1)/(3e+1)], column 1 = [1/(e+1), 1/2] → [2/(e+3), (e+1)/(e+3)].
    e = math.e
    q = sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 1.0, iterations=1)
    want = torch.tensor([[2 * e / (3 * e + 1), (e + 1) / (3 * e + 1)],
                         [2 / (e + 3), (e + 1) / (e + 3)]])
    torch.testing.assert_close(q, want)


def test_sinkhorn_marginals_equal_partition() -> None:
    b, k = 64, 8
    s = unit_scores(b, k, seed=1)
    for iters in (3, 200):
        q = sinkhorn(s, 0.05, iters)
        # Each sample's code is a distribution over the prototypes (exact: columns come last).
        torch.testing.assert_close(q.sum(dim=1), torch.ones(b))
        assert (q >= 0).all()
        # Each prototype gets ≈ B/K of the batch: approximately after 3 iterations, exactly at
        # convergence.
        tol = 0.5 if iters == 3 else 1e-3
        torch.testing.assert_close(q.sum(dim=0), torch.full((k,), b / k), rtol=0, atol=tol * b / k)


def test_sinkhorn_spreads_a_collapsed_batch() -> None:
    # All samples prefer prototype 0; the equal-partition constraint still spreads the mass.
    s = torch.zeros(16, 4)
    s[:, 0] = 0.9
    s += 0.01 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(s, 0.05, 3)
    assert q.argmax(dim=1).unique().numel() > 1
    assert q.sum(dim=0).max() < 16 * 0.5


def test_sinkhorn_uniform_scores_give_uniform_codes() -> None:
    for value in (0.0, 0.7, -1.0):
        q = sinkhorn(torch.full((6, 5), value), 0.05, 3)
        torch.testing.assert_close(q, torch.full((6, 5), 1 / 5))


def test_sinkhorn_is_detached_float32_and_stable() -> None:
    s = unit_scores(10, 6, seed=3).requires_grad_()
    q = sinkhorn(s, 0.05)
    assert not q.requires_grad and q.dtype == torch.float32
    assert sinkhorn(s.detach().bfloat16(), 0.05).dtype == torch.float32
    # ε = 0.02 and a prototype opposite every sample: exp(scores/ε) spans e^±50, and after
    # subtracting the maximum the antipodal row underflows to 0 in float32 (0/0 → NaN there).
    s = torch.full((8, 3), 0.95)
    s[:, 2] = -0.95
    s[:, 1] += torch.linspace(-0.1, 0.1, 8)
    for eps in (0.02, 0.005):
        q = sinkhorn(s, eps, 3)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(dim=1), torch.ones(8))


def test_sinkhorn_ignores_a_per_prototype_offset() -> None:
    # The first row normalisation cancels any per-prototype factor exp(a_k/ε).
    s = unit_scores(9, 4, seed=4)
    offset = torch.tensor([0.3, -0.2, 0.0, 0.5])
    torch.testing.assert_close(sinkhorn(s + offset, 0.05), sinkhorn(s, 0.05))


# ----------------------------------------------------------------------------------- loss


def test_loss_hand_computed() -> None:
    # τ = 1. View t has uniform scores: ℓ(z_t, q_s) = log 2 whatever q_s. View s scores
    # [[1, 0], [0, 1]] against one-hot codes of view t on the same prototype:
    # ℓ(z_s, q_t) = −log(e / (e + 1)) = log(1 + 1/e). docs/methods.md's L is the sum of the two.
    st = torch.zeros(2, 2)
    ss = torch.eye(2)
    qt = torch.eye(2)
    qs = torch.tensor([[0.3, 0.7], [0.5, 0.5]])
    loss = swav_loss(st, ss, qt, qs, 1.0)
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + 1 / math.e))


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.2, 5.0])
@pytest.mark.parametrize("b,k", [(2, 3), (9, 5), (16, 10)])
def test_loss_matches_slow_loop(b: int, k: int, tau: float) -> None:
    st, ss = unit_scores(b, k, seed=b), unit_scores(b, k, seed=b + 100)
    qt, qs = sinkhorn(st, 0.05).double(), sinkhorn(ss, 0.05).double()
    got = swav_loss(st.double(), ss.double(), qt, qs, tau)
    assert got.item() == pytest.approx(slow_swav(st, ss, qt, qs, tau), rel=1e-9)


def test_identical_views_and_lower_bound() -> None:
    # Identical views: both terms equal. Cross-entropy ≥ entropy: L ≥ H(q_t) + H(q_s), with
    # equality when softmax(s/τ) reproduces the codes.
    s = unit_scores(8, 5, seed=7)
    q = sinkhorn(s, 0.05)
    loss = swav_loss(s, s, q, q, 0.1)
    # ℓ(s, q): the second term, uniform scores, costs log K whatever its codes.
    half = swav_loss(s, torch.zeros_like(s), torch.full_like(q, 0.2), q, 0.1) - math.log(5)
    torch.testing.assert_close(loss, 2 * half)
    entropy = -(q * q.clamp_min(1e-30).log()).sum(dim=1).mean()
    assert loss >= 2 * entropy - 1e-6
    tau = 0.1
    matched = tau * q.log()  # softmax(matched/τ) = q exactly
    torch.testing.assert_close(swav_loss(matched, matched, q, q, tau), 2 * entropy)


def test_temperature_extremes() -> None:
    s1, s2 = unit_scores(4, 6, seed=8), unit_scores(4, 6, seed=9)
    q1, q2 = sinkhorn(s1, 0.05), sinkhorn(s2, 0.05)
    # τ → ∞: the softmax is uniform, each term → log K.
    assert swav_loss(s1, s2, q1, q2, 1e4).item() == pytest.approx(2 * math.log(6), rel=1e-4)
    # τ → 0: finite (log_softmax, no exp overflow), and one-hot codes on each view's own
    # best prototype cost → 0 when both views agree.
    assert torch.isfinite(swav_loss(s1, s2, q1, q2, 1e-3))
    onehot = torch.nn.functional.one_hot(s1.argmax(dim=1), 6).float()
    assert swav_loss(s1, s1, onehot, onehot, 1e-3).item() < 1e-6


def test_gradient_reaches_scores_not_codes() -> None:
    st = unit_scores(6, 4, seed=10).requires_grad_()
    ss = unit_scores(6, 4, seed=11).requires_grad_()
    qt, qs = sinkhorn(st, 0.05), sinkhorn(ss, 0.05)
    qt_leaf, qs_leaf = qt.clone().requires_grad_(), qs.clone().requires_grad_()
    swav_loss(st, ss, qt_leaf, qs_leaf, 0.1).backward()
    assert st.grad is not None and st.grad.abs().sum() > 0
    assert ss.grad is not None and ss.grad.abs().sum() > 0
    assert qt_leaf.grad is None and qs_leaf.grad is None  # codes are constant targets
    # The gradient w.r.t. the scores is (softmax − q)/(Bτ): through scores only, not Sinkhorn.
    want = (torch.softmax(st.detach() / 0.1, dim=1) - qs) / (6 * 0.1)
    torch.testing.assert_close(st.grad, want)


# ----------------------------------------------------------------------------------- method


def make(seed: int = 0, **kw: Any) -> Method:
    torch.manual_seed(seed)
    cfg = Config(**{"num_prototypes": 7, "proj_hidden_dim": 32, "proj_output_dim": 8, **kw})
    cfg.check()
    return Method(cfg, SmallCNN(1, 4), Task("image", 10))


def views(b: int = 6, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 8, 8, generator=g), torch.randn(b, 1, 8, 8, generator=g), \
        torch.zeros(b, dtype=torch.long)


def at_epoch(epoch: int) -> Step:
    return Step(step=epoch * 10, total_steps=100, epoch=epoch, steps_per_epoch=10)


def test_config_check_rejects_bad_values() -> None:
    bad: dict[str, Any]
    for bad in ({"temperature": 0.0}, {"epsilon": -1.0}, {"sinkhorn_iterations": 0},
                {"num_prototypes": 1}, {"queue_length": -1}, {"freeze_prototypes_epochs": -1},
                {"proj_output_dim": 0}):
        with pytest.raises(ValueError):
            Config(**bad).check()
    Config().check()


def test_prototypes_normalised_at_init_and_after_forward() -> None:
    m = make()
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(7))
    with torch.no_grad():
        m.prototypes.weight.mul_(torch.rand(7, 1) * 5 + 0.1)
    x1, x2, y = views()
    m(x1, x2, y, at_epoch(1))
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(7))
    assert torch.allclose(m.embed(x1).norm(dim=1), torch.ones(6))


def test_loss_is_swav_loss_of_sinkhorn_codes() -> None:
    m = make(temperature=0.2, epsilon=0.07)
    x1, x2, y = views()
    out = m(x1, x2, y, at_epoch(1))
    with torch.no_grad():
        s1 = m.embed(x1) @ m.prototypes.weight.T
        s2 = m.embed(x2) @ m.prototypes.weight.T
        want = swav_loss(s1, s2, sinkhorn(s1, 0.07), sinkhorn(s2, 0.07), 0.2)
    torch.testing.assert_close(out["loss"].detach(), want)


def prototype_step(epoch: int) -> tuple[bool, bool, bool]:
    """(prototypes have a grad after before_optimizer_step, prototypes moved, backbone moved)."""
    m = make()
    opt = build_optimizer("adamw", m, lr=0.1, weight_decay=0.1)
    x1, x2, y = views()
    out = m(x1, x2, y, at_epoch(epoch))
    # After the forward: it renormalises the prototypes (a last-bit change to unit rows).
    protos = m.prototypes.weight.detach().clone()
    conv = next(m.backbone.parameters()).detach().clone()
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    assert m.prototypes.weight.grad is not None and m.prototypes.weight.grad.abs().sum() > 0
    m.before_optimizer_step(at_epoch(epoch))
    has_grad = m.prototypes.weight.grad is not None
    opt.step()
    m.after_step(at_epoch(epoch))
    return (has_grad, not torch.equal(m.prototypes.weight, protos),
            not torch.equal(next(m.backbone.parameters()), conv))


def test_prototypes_frozen_during_first_epoch_only() -> None:
    # Epoch 0: the gradient is dropped and a real AdamW step (weight decay on) leaves the
    # prototypes exactly as they were, while the backbone learns.
    assert prototype_step(0) == (False, False, True)
    assert prototype_step(1) == (True, True, True)


def test_freeze_epochs_configurable() -> None:
    m = make(freeze_prototypes_epochs=0)
    x1, x2, y = views()
    m(x1, x2, y, at_epoch(0))["loss"].backward()
    m.before_optimizer_step(at_epoch(0))
    assert m.prototypes.weight.grad is not None
    m = make(freeze_prototypes_epochs=3)
    m(x1, x2, y, at_epoch(2))["loss"].backward()
    m.before_optimizer_step(at_epoch(2))
    assert m.prototypes.weight.grad is None


def test_batch_of_two() -> None:
    m = make()
    x1, x2, y = views(b=2)
    loss = m(x1, x2, y, at_epoch(1))["loss"]
    assert torch.isfinite(loss)
    loss.backward()


def test_bf16_autocast_keeps_scores_and_codes_in_float32() -> None:
    m = make(queue_length=4, epoch_queue_starts=0)
    x1, x2, y = views(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x1, x2, y, at_epoch(1))
        loss = m(x1, x2, y, at_epoch(1))["loss"]  # the second call uses the filled queue
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert m.queue.dtype == torch.float32
    loss.backward()
    assert m.prototypes.weight.grad is not None


def test_no_queue_by_default() -> None:
    m = make()
    assert m.queue.shape == (2, 0, 8)
    x1, x2, y = views()
    m(x1, x2, y, at_epoch(5))
    assert m.queue_ptr.item() == 0 and not m.queue_filled.item()


# ----------------------------------------------------------------------------------- queue


def test_queue_is_fifo_and_starts_at_its_epoch() -> None:
    m = make(queue_length=10, epoch_queue_starts=2)
    b1, b2, b3 = views(4, seed=1), views(4, seed=2), views(4, seed=3)
    m(*b1, at_epoch(1))  # before epoch_queue_starts: no queue at all
    assert m.queue_ptr.item() == 0 and m.queue.abs().sum() == 0
    zs = []
    for x1, x2, y in (b1, b2, b3):
        with torch.no_grad():
            zs.append((m.embed(x1), m.embed(x2)))
        m(x1, x2, y, at_epoch(2))
    # 12 projections went through a ring of 10: the newest 10 are kept, the 2 oldest dropped.
    assert m.queue_ptr.item() == 2 and m.queue_filled.item()
    for view in (0, 1):
        newest = torch.cat([zs[0][view][2:], zs[1][view], zs[2][view]])  # 10 x d, oldest first
        kept = torch.cat([m.queue[view, 2:], m.queue[view, :2]])  # ring read from the pointer
        torch.testing.assert_close(kept, newest)


def test_queue_used_for_codes_only_once_filled() -> None:
    m = make(queue_length=8, epoch_queue_starts=0)
    tau, eps = m.cfg.temperature, m.cfg.epsilon

    def expected(x1: Tensor, x2: Tensor, use: bool) -> Tensor:
        with torch.no_grad():
            w = m.prototypes.weight
            s1, s2 = m.embed(x1) @ w.T, m.embed(x2) @ w.T
            if use:
                q1 = sinkhorn(torch.cat([m.queue[0] @ w.T, s1]), eps)[-len(s1):]
                q2 = sinkhorn(torch.cat([m.queue[1] @ w.T, s2]), eps)[-len(s2):]
            else:
                q1, q2 = sinkhorn(s1, eps), sinkhorn(s2, eps)
            return swav_loss(s1, s2, q1, q2, tau)

    for seed, filled_before in ((1, False), (2, False), (3, True), (4, True)):
        x1, x2, y = views(4, seed=seed)
        want = expected(x1, x2, filled_before)
        assert bool(m.queue_filled) == filled_before
        got = m(x1, x2, y, at_epoch(0))["loss"].detach()
        torch.testing.assert_close(got, want)
        if filled_before:
            assert not torch.allclose(got, expected(x1, x2, False))


def test_queue_gets_no_gradient_and_eval_does_not_enqueue() -> None:
    m = make(queue_length=4, epoch_queue_starts=0)
    x1, x2, y = views(4)
    m(x1, x2, y, at_epoch(0))
    loss = m(x1, x2, y, at_epoch(0))["loss"]
    loss.backward()
    assert not m.queue.requires_grad and m.queue.grad is None
    m.eval()
    before = m.queue.clone(), m.queue_ptr.clone()
    m(*views(4, seed=5), at_epoch(0))
    assert torch.equal(m.queue, before[0]) and torch.equal(m.queue_ptr, before[1])


def test_queue_larger_batch_than_queue_keeps_last_rows() -> None:
    m = make(queue_length=3, epoch_queue_starts=0)
    x1, x2, y = views(5)
    with torch.no_grad():
        z1 = m.embed(x1)
    m(x1, x2, y, at_epoch(0))
    torch.testing.assert_close(m.queue[0], z1[-3:])
    assert m.queue_ptr.item() == 0 and m.queue_filled.item()


def test_state_round_trips_through_checkpoint(tmp_path: Path) -> None:
    m = make(queue_length=6, epoch_queue_starts=0)
    for seed in (1, 2):
        m(*views(4, seed=seed), at_epoch(1))
    assert m.queue_ptr.item() == 2 and m.queue_filled.item()
    state = m.state_dict()
    assert {"prototypes.weight", "queue", "queue_ptr", "queue_filled"} <= state.keys()
    save_checkpoint(tmp_path, {"model": state})
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    fresh = make(seed=99, queue_length=6, epoch_queue_starts=0)
    assert not torch.equal(fresh.prototypes.weight, m.prototypes.weight)
    fresh.load_state_dict(loaded["model"])
    for key, value in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # The restored method continues exactly as the original would.
    batch = views(4, seed=3)
    torch.testing.assert_close(fresh(*batch, at_epoch(1))["loss"], m(*batch, at_epoch(1))["loss"])
    assert torch.equal(fresh.queue, m.queue) and torch.equal(fresh.queue_ptr, m.queue_ptr)
