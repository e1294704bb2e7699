"""The contract every registered method meets; a new method module gets these tests for free."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslsearch import methods
from sslsearch.config import TrialConfig, trial_config
from sslsearch.data import DataBundle, load_dataset
from sslsearch.methods.base import Step
from sslsearch.train import run
from sslsearch.trial.checkpoint import load_checkpoint, save_checkpoint
from sslsearch.trial.trial import build_method

ALL = methods.available()


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_tabular() -> DataBundle:
    return load_dataset("digits_tabular")


def tiny(method: str, **kw: object) -> TrialConfig:
    base = {"method": method, "backbone": "small_cnn", "backbone_width": 8, "epochs": 2,
            "batch_size": 32, "device": "cpu", "knn_k": 10, "probe_max_iter": 10}
    base.update(kw)
    return trial_config(base)


def one_loss(cfg: TrialConfig, data: DataBundle, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    method = build_method(cfg, data)
    x, y = next(data.train.iter_batches(32, None, shuffle=False, drop_last=True))
    x1 = x.float() / 255 if data.kind == "image" else x
    x2 = x1.flip(-1) if data.kind == "image" else x1
    out = method(x1, x2, y, Step(step=0, total_steps=10, epoch=1, steps_per_epoch=5))
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), out
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), "no gradient reached the backbone"
    return loss.detach()


def test_registry_has_the_mission_methods() -> None:
    assert {"simclr", "vicreg"} <= set(ALL)
    assert "base" not in ALL


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_image_and_seeded(name: str, digits: DataBundle) -> None:
    cfg = tiny(name)
    a, b = one_loss(cfg, digits, seed=3), one_loss(cfg, digits, seed=3)
    assert torch.equal(a, b), "same seed must give the same loss"


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_tabular(name: str, digits_tabular: DataBundle) -> None:
    one_loss(tiny(name, backbone="mlp", backbone_width=32, dataset="digits_tabular"),
             digits_tabular)


@pytest.mark.parametrize("name", ALL)
def test_config_is_frozen_with_defaults(name: str) -> None:
    module = methods.get(name)
    cfg = module.Config()
    with pytest.raises(AttributeError):
        cfg.__setattr__(next(iter(cfg.__dataclass_fields__)), None)
    assert module.Method.__doc__ or module.__doc__, "the method needs a docstring citing its paper"


@pytest.mark.parametrize("name", ALL)
def test_state_round_trips_through_checkpoint(name: str, digits: DataBundle, tmp_path: Path
                                              ) -> None:
    cfg = tiny(name, epochs=1, probe=False)
    run(cfg, checkpoint_dir=tmp_path, data=digits)
    state = load_checkpoint(tmp_path)
    assert state is not None
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    fresh = build_method(cfg, digits)
    fresh.load_state_dict(state["model"])
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    save_checkpoint(tmp_path / "again", {"model": fresh.state_dict()})
    again = load_checkpoint(tmp_path / "again")
    assert again is not None and again["model"].keys() == state["model"].keys()


def test_every_method_has_the_six_pieces_a_method_needs() -> None:
    """The README's "Adding a method": a registered method has its module, its space, its own
    test file, its place in all_methods.yaml and a case in the learning and precision tests;
    this names every piece a method lacks."""
    from sslsearch.config import SPACES_DIR
    from sslsearch.search.space import load_space
    from tests.methods.test_learning import CASES as LEARNING
    from tests.methods.test_precision import CASES as PRECISION

    here = Path(__file__).parent
    package = Path(methods.__file__).parent
    in_all = set(load_space("all_methods").method_names)
    missing = [f"{m}: {piece}" for m in ALL for piece, present in (
        (f"sslsearch/methods/{m}.py", (package / f"{m}.py").is_file()),
        (f"search_spaces/{m}.yaml", (SPACES_DIR / f"{m}.yaml").is_file()),
        (f"tests/methods/test_{m}.py", (here / f"test_{m}.py").is_file()),
        ("search_spaces/all_methods.yaml (python -m sslsearch.all_methods)", m in in_all),
        ("a case in tests/methods/test_learning.py's CASES", m in LEARNING),
        ("a case of its loss in tests/methods/test_precision.py's CASES",
         any(k.startswith(f"sslsearch.methods.{m}.") for k in PRECISION)),
    ) if not present]
    assert not missing, "\n".join(missing)
