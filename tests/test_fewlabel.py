"""The few-label probes: stratified seeded draws, and probes averaged over them."""

from __future__ import annotations

import pytest
import torch

from sslsearch.trial.fewlabel import draw, few_label_probes, markdown, setting_name


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
    """Three well-separated Gaussian classes in 8 dimensions: 1 label a class already
    classifies most test points, and every draw is a separate probe."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 4

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(3).repeat_interleave(n)
        return centres[y] + torch.randn(len(y), 8, generator=gen), y

    train, val, test = split(40), split(20), split(30)
    results = few_label_probes(train, val, test, 3, shots=(1, 5, 40), fractions=(0.1,),
                               draws=4, max_iter=100)
    assert [r.name for r in results] == ["1_per_class", "5_per_class", "10pct"]  # 40: all
    one, five, pct = results
    assert (one.labels, five.labels, pct.labels) == (3, 15, 12)
    assert len(one.test_accs) == 4 and five.mean > 0.9
    assert one.mean == pytest.approx(sum(one.test_accs) / 4)
    assert five.metrics() == {"few_label_5_per_class_test_acc": five.mean,
                              "few_label_5_per_class_test_acc_sd": five.sd}
    assert "| 5 per class | 15 |" in markdown(results, 4)
    assert setting_name(fraction=0.015) == "1p5pct"
