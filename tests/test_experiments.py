"""Every experiment under experiments/ validates, and says what it reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslsearch.config import EXPERIMENTS_DIR, TrialConfig, load_experiment

FILES = sorted(EXPERIMENTS_DIR.glob("*.yaml"))


def test_the_published_setups_are_there() -> None:
    names = {p.stem for p in FILES}
    assert {f"table1_{d}_{b}" for d in ("cifar10", "cifar100")
            for b in ("resnet18", "resnet50")} <= names
    assert {"vicreg_cifar10_resnet34", "imix_covtype", "imix_cifar10_resnet50",
            "fashion_mnist"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_validates(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.description
    if path.stem != "quick":
        header = path.read_text().split("\ndescription:")[0]
        assert header.startswith("# Reproduces:"), path.name


def test_reproductions_match_their_seeds() -> None:
    vicreg = load_experiment("vicreg_cifar10_resnet34").trial
    assert (vicreg.method, vicreg.backbone, vicreg.optimizer, vicreg.epochs) == (
        "vicreg", "resnet34", "lars", 100)
    assert "76.67" in (EXPERIMENTS_DIR / "vicreg_cifar10_resnet34.yaml").read_text()
    covtype = load_experiment("imix_covtype").trial
    assert (covtype.method, covtype.dataset, covtype.backbone) == ("imix", "covtype", "mlp")
    assert "72.1" in (EXPERIMENTS_DIR / "imix_covtype.yaml").read_text()
    table1 = (EXPERIMENTS_DIR / "table1_cifar100_resnet18.yaml").read_text()
    assert "SimCLR 55.0" in table1 and "DARe 61.6" in table1
    fashion = load_experiment("fashion_mnist").trial
    assert fashion.device == "cpu" and fashion.max_train_samples is not None


@pytest.mark.parametrize("search,field", [
    ({"num_samples": 0}, "num_samples"), ({"max_concurrent": -1}, "max_concurrent"),
    ({"metric": "val_acc"}, "metric"), ({"mode": "maximise"}, "mode"),
    ({"metric": "alpha_req"}, "alpha_req_score"), ({"metric": "rankme", "mode": "min"}, "mode"),
    ({"grace_period": 0}, "grace_period"), ({"reduction_factor": 1}, "reduction_factor"),
    ({"gpus_per_trial": -0.5}, "gpus_per_trial"), ({"collapse_std_ratio": float("nan")},
                                                   "collapse_std_ratio")])
def test_a_bad_search_block_exits_2_with_one_line_naming_file_and_field(
        tmp_path: Path, search: dict[str, object], field: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The search block is checked like the trial block, before any trial starts (in process:
    tests/test_space.py runs the command line's exit-2 path as a subprocess)."""
    import yaml

    from sslsearch.run import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"description": "x", "trial": {"epochs": 1},
                                    "search": search}))
    assert main(["--space", "simclr", "--experiment", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and field in lines[0], lines


def test_the_peer_recipe_is_issue_15s_and_the_tuned_search_runs_on_the_same_setup() -> None:
    """The peer comparison (README, "Does the search beat defaults?") is fair only when the
    recipe is the conventional one and the tuned side changes nothing of the setup: the same
    subset, network, batch, epochs and kNN, judged on validation kNN (no probe: the sweep then
    exports its best val-kNN trial, the one the README re-runs)."""
    from sslsearch.search.space import load_space

    recipe = load_experiment("peer_simclr_fashion_mnist").trial
    assert (recipe.method_params["temperature"], recipe.optimizer, recipe.momentum,
            recipe.weight_decay, recipe.warmup_epochs, recipe.final_lr_ratio) == (
        0.5, "sgd", 0.9, 5e-4, 0, 0.0)
    assert recipe.base_lr * 128 / 256 == pytest.approx(0.06)  # lr 0.06 · batch/128
    assert (recipe.crop_min_scale, recipe.flip_p, recipe.jitter_strength,
            recipe.grayscale_p) == (0.08, 0.5, 1.0, 0.0)
    tuned = load_experiment("peer_tuned_simclr_fashion_mnist")
    setup = ("dataset", "max_train_samples", "val_fraction", "split_seed", "backbone",
             "backbone_width", "epochs", "batch_size", "knn_k", "knn_t", "probe")
    assert {k: getattr(tuned.trial, k) for k in setup} == {k: getattr(recipe, k) for k in setup}
    assert (recipe.max_train_samples, recipe.batch_size, recipe.epochs, recipe.knn_k,
            recipe.knn_t, recipe.probe) == (10000, 256, 6, 200, 0.1, False)
    space = load_space("peer/simclr.yaml", tuned.trial)
    assert not {"batch_size", "epochs", "max_train_samples"} & set(space.dists("simclr"))
    assert space.trial["batch_size"] == 256


# ------------------------------------------------------------------------------------------------
# An experiment's per-method settings (its methods: block)

PER_METHOD = """\
description: a shared rate, and VICReg's own
trial: {dataset: digits, method: simclr, base_lr: 0.002, epochs: 2, warmup_epochs: 1}
methods:
  vicreg: {base_lr: 0.0005, weight_decay: 0.01}
"""


def _per_method_experiment(tmp_path: Path) -> Path:
    path = tmp_path / "per_method.yaml"
    path.write_text(PER_METHOD)
    return path


def test_a_methods_block_sets_that_methods_defaults_and_no_others(tmp_path: Path) -> None:
    exp = load_experiment(_per_method_experiment(tmp_path))
    assert exp.trial_for("vicreg").base_lr == 0.0005
    assert exp.trial_for("vicreg").weight_decay == 0.01
    assert exp.trial_for("simclr").base_lr == 0.002 and exp.trial_for("byol").base_lr == 0.002
    assert exp.trial_for("vicreg").method == "vicreg" and exp.trial_for("vicreg").epochs == 2


def test_train_takes_the_methods_rate_unless_the_command_line_sets_one(tmp_path: Path) -> None:
    from sslsearch.train import _parser, _trial_from_args

    path = str(_per_method_experiment(tmp_path))

    def trial(*argv: str) -> TrialConfig:
        return _trial_from_args(_parser().parse_args(["--experiment", path, *argv]))

    assert trial("--method", "vicreg").base_lr == 0.0005
    assert trial("--method", "byol").base_lr == 0.002
    assert trial().base_lr == 0.002  # the experiment's own method, simclr
    assert trial("--method", "vicreg", "--set", "base_lr=0.001").base_lr == 0.001


def test_a_search_uses_the_methods_rate_where_it_does_not_draw_one(tmp_path: Path) -> None:
    from sslsearch.search.space import default_point, parse_space, trial_from_config

    exp = load_experiment(_per_method_experiment(tmp_path))
    fixed = parse_space({"method": {"choice": ["simclr", "vicreg"]}}, "s.yaml", exp.trial,
                        exp.methods)
    assert trial_from_config(fixed.fixed("vicreg")).base_lr == 0.0005  # the defaults candidate
    assert trial_from_config(fixed.fixed("simclr")).base_lr == 0.002
    drawn = parse_space({"method": "vicreg", "trial": {"base_lr": {"loguniform": [1e-4, 1e-2]}}},
                        "s.yaml", exp.trial, exp.methods)
    # the first trial is the defaults: the method's own rate, as a point the space can draw
    assert default_point(drawn, "vicreg") == {"base_lr": 0.0005}
    assert trial_from_config({**drawn.fixed("vicreg"), "base_lr": 0.004}).base_lr == 0.004


@pytest.mark.parametrize(("block", "field"), [
    ("methods: {nosuch: {base_lr: 0.1}}", "methods.nosuch"),
    ("methods: {vicreg: {epochs: 3}}", "methods.vicreg.epochs"),
    ("methods: {vicreg: {base_lr: -1}}", "base_lr"),
    ("methods: [vicreg]", "methods"),
])
def test_a_bad_methods_block_exits_2_with_one_line_naming_file_and_field(
        tmp_path: Path, block: str, field: str) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(PER_METHOD.split("methods:")[0] + block + "\n")
    out = subprocess.run([sys.executable, "-m", "sslsearch.train", "--experiment", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and field in lines[0], out.stderr


def test_the_label_free_fashion_mnist_is_fashion_mnist_with_the_labels_hidden() -> None:
    """One owner for the settings: the label-free file differs from fashion_mnist.yaml only in
    hiding the labels and ranking by RankMe."""
    import dataclasses

    plain, hidden = load_experiment("fashion_mnist"), load_experiment("fashion_mnist_label_free")
    assert (hidden.trial.labels, hidden.search.metric) == (False, "rankme")
    assert dataclasses.replace(hidden.trial, labels=True) == plain.trial
    assert dataclasses.replace(hidden.search, metric=plain.search.metric) == plain.search
    assert hidden.methods == plain.methods
