"""The few-label probes: stratified seeded draws, and probes averaged over them."""

from __future__ import annotations

import pytest
import torch

from sslsearch.trial.fewlabel import (
    FewLabelResult,
    draw,
    few_label_probes,
    markdown,
    setting_name,
)


def _labels() -> torch.Tensor:
    return torch.tensor([0] * 50 + [1] * 30 + [2] * 20)


def test_k_per_class_takes_k_of_each_class_or_all_of_a_small_one() -> None:
    y = _labels()
    idx = draw(y, shots=5, seed=0)
    assert torch.bincount(y[idx]).tolist() == [5, 5, 5]
    assert torch.bincount(y[draw(y, shots=25, seed=0)]).tolist() == [25, 25, 20]
    assert len(set(idx.tolist())) == len(idx)  # without replacement


def test_a_fraction_keeps_the_class_balance_with_one_image_at_least() -> None:
    y = _labels()
    assert torch.bincount(y[draw(y, fraction=0.1, seed=0)]).tolist() == [5, 3, 2]
    assert torch.bincount(y[draw(y, fraction=0.01, seed=0)]).tolist() == [1, 1, 1]


def test_draws_are_seeded_and_differ_between_seeds() -> None:
    y = _labels()
    assert torch.equal(draw(y, shots=3, seed=4), draw(y, shots=3, seed=4))
    assert not torch.equal(draw(y, shots=3, seed=4), draw(y, shots=3, seed=5))
    with pytest.raises(ValueError):
        draw(y, shots=3, fraction=0.1)
    with pytest.raises(ValueError):
        draw(y, shots=0)


def test_probes_average_their_draws_and_learn_from_few_labels() -> None:
    """Three well-separated Gaussian classes in 8 dimensions: 5 labels a class classify the
    test points, and every draw is a separate probe (about 1 s each: the L-BFGS path)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 4

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(3).repeat_interleave(n)
        return centres[y] + torch.randn(len(y), 8, generator=gen), y

    train, val, test = split(40), split(20), split(30)
    results = few_label_probes(train, val, test, 3, shots=(5, 40), fractions=(0.1,),
                               draws=2, max_iter=15)
    assert [r.name for r in results] == ["5_per_class", "10pct"]  # 40 a class: the full probe
    five, pct = results
    assert (five.labels, pct.labels) == (15, 12)
    assert len(five.test_accs) == 2 and five.mean > 0.9
    assert five.mean == pytest.approx(sum(five.test_accs) / 2)
    assert five.metrics() == {"few_label_5_per_class_test_acc": five.mean,
                              "few_label_5_per_class_test_acc_sd": five.sd}
    assert "| 5 per class | 15 |" in markdown(results, 2)
    assert setting_name(fraction=0.015) == "1p5pct"


def test_a_trial_reports_its_few_label_probes_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring (the probes themselves are tested above): two settings and two draws, so the
    trial stays fast; the same draws for every trial of a split (split_seed)."""
    from sslsearch.config import TrialConfig, trial_config
    from sslsearch.train import run
    from sslsearch.trial import trial as trial_module

    calls: list[tuple[int, int, int]] = []

    def few(train: tuple[torch.Tensor, torch.Tensor], val: object, test: object,
            num_classes: int, *, seed: int, **kwargs: object) -> list[FewLabelResult]:
        calls.append((len(train[0]), num_classes, seed))
        return [FewLabelResult("1_per_class", 10, (0.5, 0.6), (0.5, 0.5)),
                FewLabelResult("10pct", 130, (0.8, 0.8), (0.8, 0.8))]

    monkeypatch.setattr(trial_module, "few_label_probes", few)
    tiny = {"backbone_width": 8, "batch_size": 64, "epochs": 1, "device": "cpu", "knn_k": 10,
            "probe_max_iter": 20, "method": "simclr", "label_free": False, "dataset": "digits",
            "few_label": True, "split_seed": 3}
    final = run(trial_config(tiny))
    assert len(calls) == 1 and calls[0][1:] == (10, 3)  # the probe's features, split_seed
    assert final["few_label_1_per_class_test_acc"] == pytest.approx(0.55)
    assert final["few_label_1_per_class_test_acc_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert final["few_label_10pct_test_acc"] == pytest.approx(0.8)
    assert TrialConfig().few_label is False  # off unless asked

