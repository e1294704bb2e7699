import math

import pytest
import torch
from torch import nn

from sslsearch.errors import ConfigError
from sslsearch.parts.optim import LARS, build_optimizer, lr_at, param_groups, scaled_lr, set_lr


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_sgd_and_lars_scale_the_rate_linearly_per_256_examples(optimizer: str) -> None:
    assert scaled_lr(0.3, 512, optimizer) == pytest.approx(0.6)
    assert scaled_lr(0.3, 128, optimizer) == pytest.approx(0.15)
    assert scaled_lr(0.3, 256, optimizer) == pytest.approx(0.3)


def test_adamw_holds_its_rate_at_any_batch_unless_told_otherwise() -> None:
    for batch in (32, 64, 256, 1024):
        assert scaled_lr(2e-3, batch, "adamw") == pytest.approx(2e-3)
    assert scaled_lr(2e-3, 64, "adamw", "linear") == pytest.approx(5e-4)
    assert scaled_lr(2e-3, 1024, "adamw", "sqrt") == pytest.approx(4e-3)  # √(1024/256) = 2
    assert scaled_lr(0.3, 512, "sgd", "none") == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="optimizer 'adam' is unknown"):
        scaled_lr(1e-3, 64, "adam")


def test_a_trial_peaks_at_the_rate_its_rule_gives() -> None:
    """The training loop's schedule peaks at ``scaled_lr``'s rate for the batch it really uses
    (AdamW at batch 64: base_lr itself; SGD: a quarter of it; a batch capped by the data: the
    cap's rate); an unknown lr_scaling is refused naming the field."""
    from sslsearch.config import trial_config
    from sslsearch.parts.distributed import ONE_PROCESS
    from sslsearch.train import Schedule

    for optimizer, scaling, n_train, want in (("adamw", "auto", 1000, 4e-3),
                                              ("sgd", "auto", 1000, 1e-3),
                                              ("sgd", "auto", 32, 5e-4),  # batch capped at 32
                                              ("adamw", "linear", 1000, 1e-3)):
        cfg = trial_config({"optimizer": optimizer, "base_lr": 4e-3, "batch_size": 64,
                            "lr_scaling": scaling})
        assert Schedule.of(cfg, n_train, ONE_PROCESS).peak_lr == pytest.approx(want)
    with pytest.raises(ConfigError, match=r"trial.lr_scaling = 'cubic' is out of range; "
                                          r"allowed: auto, linear, sqrt, none"):
        trial_config({"lr_scaling": "cubic"})


def test_warmup_then_cosine() -> None:
    kw = {"total_steps": 110, "warmup_steps": 10, "peak_lr": 1.0, "final_lr": 0.1}
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_biases_and_norms_are_excluded_from_decay() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert no_decay["lars_adapt"] is False


def test_lars_step_matches_formula() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    w.grad = torch.tensor([[0.6, 0.8]])
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars_adapt": True}], lr=0.1, eta=0.001)
    opt.step()
    # u = g (‖u‖ = 1), q = η‖w‖/‖u‖ = 0.005, μ = q·u, w ← w − lr·μ
    torch.testing.assert_close(w.data, torch.tensor([[3.0, 4.0]]) - 0.1 * 0.005 * w.grad)


def test_lars_skips_adaptation_for_excluded_group() -> None:
    b = nn.Parameter(torch.tensor([1.0]))
    b.grad = torch.tensor([2.0])
    opt = LARS([{"params": [b], "weight_decay": 0.0, "lars_adapt": False}], lr=0.5)
    opt.step()
    assert b.item() == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_each_optimizer_reduces_a_quadratic(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    opt = build_optimizer(name, model, lr=0.05, weight_decay=0.0)
    first = last = math.inf
    for i in range(50):
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if i == 0 else first
        last = loss.item()
    assert last < first


def test_unknown_optimizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sgd, lars, adamw"):
        build_optimizer("adam9", nn.Linear(2, 2), lr=0.1, weight_decay=0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_sgd_parameter_whose_gradient_starts_late(fused: bool) -> None:
    # SwAV freezes its prototypes (grad None) for the first epoch; fused SGD used to fail with
    # "expected Tensor ... got NoneType" on the first step in which they got a gradient.
    def steps(fused: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
        opt = build_optimizer("sgd", model, lr=0.1, weight_decay=1e-4, fused=fused)
        x = torch.randn(8, 3)
        for i in range(3):
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).mean().backward()
            if i == 0:
                model[1].weight.grad = None  # "frozen" for the first step
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for got, want in zip(steps(fused), steps(False), strict=True):
        torch.testing.assert_close(got, want)


def test_fixed_lr_group_keeps_its_peak_rate() -> None:
    # SimSiam's fix_pred_lr: the predictor's parameters stay at the peak rate under the schedule.
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "predictor": nn.Linear(2, 2)})
    opt = build_optimizer("sgd", model, lr=0.5, weight_decay=1e-4,
                          fixed_lr_prefixes=("predictor.",))
    set_lr(opt, 0.01)
    by_fixed = {(g["fixed_lr"], g["weight_decay"] > 0): g for g in opt.param_groups}
    assert by_fixed[(False, True)]["lr"] == by_fixed[(False, False)]["lr"] == 0.01
    assert by_fixed[(True, True)]["lr"] == by_fixed[(True, False)]["lr"] == 0.5
    fixed = {id(p) for g in opt.param_groups if g["fixed_lr"] for p in g["params"]}
    assert fixed == {id(p) for p in model["predictor"].parameters()}
