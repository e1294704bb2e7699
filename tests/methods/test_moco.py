"""MoCo v2 / v1: the InfoNCE loss by hand and by a slow loop; the queue and the key encoder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslsearch import methods
from sslsearch.errors import ConfigError
from sslsearch.methods import moco
from sslsearch.methods.base import Step, Task
from sslsearch.methods.moco import enqueue, moco_loss
from sslsearch.parts.networks import build_backbone
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint


def step_at(i: int, total: int = 100) -> Step:
    return Step(step=i, total_steps=total, epoch=0, steps_per_epoch=total)


def slow_moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    qs = [v / v.norm() for v in q.double()]
    ks = [v / v.norm() for v in k.double()]
    mu = queue.double()
    total = 0.0
    for i in range(len(qs)):
        pos = math.exp(float(qs[i] @ ks[i]) / tau)
        neg = sum(math.exp(float(qs[i] @ m) / tau) for m in mu)
        total += -math.log(pos / (pos + neg))
    return total / len(qs)


def small_method(**kw: object) -> moco.Method:
    torch.manual_seed(0)
    cfg = moco.Config(**{"queue_size": 12, "proj_hidden_dim": 16, "proj_output_dim": 8, **kw})
    return moco.Method(cfg, build_backbone("mlp", in_channels=6, image_size=0, width=16),
                       Task("tabular", 3))


# ---------------------------------------------------------------------------------- the loss


def test_hand_computed() -> None:
    # q = k = e1, queue = [e2], τ = 1: ℓ = −log(e/(e + 1)) = log(1 + 1/e).
    e = torch.eye(2)
    assert moco_loss(e[:1], e[:1], e[1:], 1.0).item() == pytest.approx(math.log(1 + 1 / math.e))
    # Two queue entries equal to the key: the positive is one of three equal logits → log 3.
    assert moco_loss(e[:1], e[:1], e[:1].repeat(2, 1), 0.1).item() == pytest.approx(math.log(3))


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
@pytest.mark.parametrize(("n", "k"), [(2, 1), (2, 5), (6, 9)])
def test_matches_slow_loop(n: int, k: int, tau: float) -> None:
    g = torch.Generator().manual_seed(10 * n + k)
    q, key = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    queue = F.normalize(torch.randn(k, 4, generator=g), dim=1)
    got = moco_loss(q.double(), key.double(), queue.double(), tau).item()
    assert got == pytest.approx(slow_moco(q, key, queue, tau), rel=1e-9)


def test_queries_and_keys_normalised_inside() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    queue = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    torch.testing.assert_close(moco_loss(3 * q, 0.2 * k, queue, 0.2), moco_loss(q, k, queue, 0.2))


def test_temperature_extremes() -> None:
    e = torch.eye(4)
    # The positive aligned, the queue orthogonal: the loss vanishes as τ → 0 ...
    assert moco_loss(e[:2], e[:2], e[2:], 0.01).item() < 1e-6
    # ... and tends to log(1 + K) as τ → ∞ (all logits equal).
    assert moco_loss(e[:2], e[:2], e[2:], 1e6).item() == pytest.approx(math.log(3), rel=1e-5)


def test_no_gradient_to_keys_or_queue() -> None:
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)
    queue = F.normalize(torch.randn(6, 3), dim=1).requires_grad_()
    moco_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


# ---------------------------------------------------------------------------------- the queue


def test_enqueue_is_fifo_and_wraps_for_any_batch_size() -> None:
    queue = torch.zeros(5, 1)
    ptr = torch.zeros((), dtype=torch.long)
    for start in (1, 3, 5):  # batches of 2 into K = 5: the third write wraps around
        enqueue(queue, ptr, torch.tensor([[start], [start + 1.0]]))
    assert queue.flatten().tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    assert int(ptr) == 1
    # A batch larger than the queue: only its last K keys remain, the pointer still advances n.
    enqueue(queue, ptr, torch.arange(7.0).view(7, 1))
    assert int(ptr) == (1 + 7) % 5
    assert sorted(queue.flatten().tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert queue[(int(ptr) - 1) % 5].item() == 6.0  # the newest key sits just before the pointer


def test_queue_updated_after_the_step_with_the_keys_of_view_2() -> None:
    method = small_method()
    x1, x2 = torch.randn(4, 6), torch.randn(4, 6)
    before = method.queue.clone()
    out = method(x1, x2, torch.zeros(4, dtype=torch.long), step_at(0))
    torch.testing.assert_close(method.queue, before)  # forward leaves the queue alone
    with torch.no_grad():
        keys = F.normalize(method.key_projector(method.key_backbone(x2)), dim=1)
    out["loss"].backward()
    method.after_step(step_at(0))  # EMA first (keys already stashed), then the push
    torch.testing.assert_close(method.queue[:4], keys)
    torch.testing.assert_close(method.queue[4:], before[4:])
    assert int(method.queue_ptr) == 4
    method.after_step(step_at(1))  # nothing stashed: nothing pushed twice
    assert int(method.queue_ptr) == 4


def test_keys_take_no_gradient_the_query_encoder_does() -> None:
    method = small_method()
    loss = method(torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4), step_at(0))["loss"]
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.key_backbone.parameters())
    assert all(p.grad is None for p in method.key_projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in method.backbone.parameters())


@pytest.mark.parametrize("progress_step", [0, 90])
def test_ema_momentum_is_constant(progress_step: int) -> None:
    method = small_method(momentum=0.9)
    old = [p.clone() for p in method.key_backbone.parameters()]
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    new = [p.clone() for p in method.backbone.parameters()]
    method.after_step(step_at(progress_step))  # no ramp: the same m early and late
    for t, o, n in zip(method.key_backbone.parameters(), old, new, strict=True):
        torch.testing.assert_close(t, 0.9 * o + 0.1 * n)


def test_key_encoder_starts_as_the_query_encoder() -> None:
    method = small_method()
    for t, o in zip(method.key_backbone.parameters(), method.backbone.parameters(), strict=True):
        assert torch.equal(t, o)
    rows = method.queue.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # random unit vectors


def test_state_round_trips_and_pending_keys_are_not_state(tmp_path: Path) -> None:
    method = small_method()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for i in range(3):
        out = method(torch.randn(5, 6), torch.randn(5, 6), torch.zeros(5), step_at(i))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.after_step(step_at(i))
    state = method.state_dict()
    assert {"queue", "queue_ptr"} <= state.keys()
    assert not any("pending" in key for key in state)
    save_checkpoint(tmp_path, {"model": state})
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    fresh = small_method()
    torch.manual_seed(99)
    fresh.load_state_dict(loaded["model"])
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert int(fresh.queue_ptr) == 15 % 12


def test_v1_is_a_linear_head() -> None:
    method = small_method(mlp_head=False, temperature=0.07)
    assert isinstance(method.projector, nn.Linear)
    out = method(torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4), step_at(0))
    assert torch.isfinite(out["loss"])


def test_config_check() -> None:
    for bad in ({"temperature": 0.0}, {"momentum": 1.5}, {"queue_size": 0}):
        with pytest.raises(ConfigError):
            methods.method_config("moco", bad)
    methods.method_config("moco", {"mlp_head": False, "temperature": 0.07})
