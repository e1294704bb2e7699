"""Search-space YAML: every shipped file compiles; malformed ones give exit 2 and one line."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslsearch import methods
from sslsearch.config import SPACES_DIR, load_experiment, trial_config
from sslsearch.errors import ConfigError
from sslsearch.results import FINISHED, STOPPED_EARLY, configured_epochs, trial_status
from sslsearch.run import main
from sslsearch.search.searchers import n_startup_trials, optuna_sampler
from sslsearch.search.space import (
    Dist,
    load_space,
    parse_space,
    trial_from_config,
)

SHIPPED = sorted(p.name for p in SPACES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_compile_and_sample(name: str) -> None:
    space = load_space(name)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        cfg = trial_from_config(space(trial))
        drawn.add(cfg.method)
        study.tell(trial, 0.5)
    assert drawn <= set(space.method_names)


def test_all_methods_is_derived_from_the_per_method_spaces() -> None:
    """all_methods.yaml equals its derivation (python -m sslsearch.all_methods): each method's
    own parameters as its file has them, each shared trial field spanning every file's range."""
    from sslsearch.all_methods import derive

    assert (SPACES_DIR / "all_methods.yaml").read_text() == derive(), (
        "search_spaces/all_methods.yaml is stale: run python -m sslsearch.all_methods")
    union = load_space("all_methods")
    for name in union.method_names:
        own = load_space(name)
        assert dict(union.methods.get(name, {})) == dict(own.methods.get(name, {})), name
        for key, dist in own.trial.items():
            wide = union.trial.get(key)
            if isinstance(dist, Dist) and isinstance(wide, Dist):  # the union holds its range
                if wide.kind == "choice":
                    assert set(map(str, dist.args)) <= set(map(str, wide.args)), (name, key)
                else:
                    assert wide.args[0] <= dist.args[0] and dist.args[1] <= wide.args[1], key
    assert union.trial["base_lr"].args[0] <= load_space("swav").trial["base_lr"].args[0]


def test_one_space_per_method_and_all_methods() -> None:
    names = {Path(n).stem for n in SHIPPED}
    assert set(methods.available()) <= names
    assert "all_methods" in names
    assert set(load_space("all_methods").method_names) == set(methods.available())


def test_conditional_parameters_only_for_the_drawn_method() -> None:
    space = parse_space({"method": {"choice": ["simclr", "vicreg"]},
                         "methods": {"simclr": {"temperature": {"loguniform": [0.05, 1.0]}},
                                     "vicreg": {"sim_coeff": {"uniform": [1, 50]}}}}, "t.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        config = space(trial)
        method = trial.params["method"]
        other = "vicreg" if method == "simclr" else "simclr"
        assert not any(k.startswith(other + ".") for k in trial.params)
        cfg = trial_from_config(config)
        key = "temperature" if method == "simclr" else "sim_coeff"
        assert cfg.method_params[key] == trial.params[f"{method}.{key}"]
        study.tell(trial, 0.0)


def test_constants_and_quantized_and_list_choices() -> None:
    space = parse_space({"method": "vicreg",
                         "trial": {"epochs": 2, "crop_min_scale": {"quantized": [0.2, 0.8, 0.2]}},
                         "methods": {"vicreg": {"expander_dims": {"choice": [[64, 64], [32]]}}}},
                        "t.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    cfg = trial_from_config(space(trial))
    assert cfg.epochs == 2
    assert round(cfg.crop_min_scale / 0.2, 6) % 1 == 0
    assert cfg.method_params["expander_dims"] in ([64, 64], [32])



@pytest.mark.parametrize("num_samples,dims,expected", [
    (3, 6, 1),     # a 3-trial search (--compare's default demo): 1 random, 2 by TPE (was 4 of 3)
    (8, 8, 2),     # quick.yaml's 8 trials: a third of them random
    (16, 8, 5),    # table-1 experiments
    (30, 8, 10),   # 2 per dimension, up to Optuna's default of 10
    (30, 3, 6),
    (100, 1, 4),   # at least 4 when the budget allows
    (100, 12, 10),
    (1, 5, 1), (2, 5, 1),  # at least 1: TPE needs an observation
])
def test_startup_trials_follow_budget_and_dimensions(num_samples: int, dims: int,
                                                     expected: int) -> None:
    assert n_startup_trials(num_samples, dims) == expected


def test_startup_trials_never_spend_more_than_a_third_of_the_budget() -> None:
    for num_samples in range(3, 60):
        for dims in range(1, 20):
            n = n_startup_trials(num_samples, dims)
            assert 1 <= n <= max(1, num_samples // 3) and n <= 10
            assert n >= min(4, num_samples // 3)


def test_space_dimensions_count_what_one_trial_draws() -> None:
    space = parse_space({"method": {"choice": ["simclr", "vicreg"]},
                         "trial": {"base_lr": {"loguniform": [1e-4, 1e-2]}, "epochs": 2},
                         "methods": {"simclr": {"temperature": {"loguniform": [0.05, 1.0]}},
                                     "vicreg": {"sim_coeff": {"uniform": [1, 50]},
                                                "std_coeff": {"uniform": [1, 50]}}}}, "t.yaml")
    assert space.n_dims == 4  # method, base_lr, vicreg's two (the constant epochs is not drawn)
    assert parse_space({"method": "simclr"}, "t.yaml").n_dims == 0


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # group=True
def test_defaults_point_is_the_experiments_configuration() -> None:
    # `initial: [defaults]` warm-starts the search from the hand-picked configuration: the
    # experiment's value of each drawn trial field, the experiment's or the method's own value
    # of each drawn method parameter; a value the space cannot draw is left to TPE.
    doc = yaml.safe_load("""
method: vicreg
trial:
  base_lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: {choice: [32, 64]}
  crop_min_scale: {quantized: [0.2, 0.6, 0.2]}
  weight_decay: 1.0e-5
methods:
  vicreg:
    sim_coeff: {uniform: [1, 50]}
    cov_coeff: {loguniform: [0.1, 5]}
    expander_dims: {choice: [[256, 256], [512, 512]]}
initial:
  - {base_lr: 0.002}
  - defaults
""")
    exp = trial_config({"base_lr": 0.004, "batch_size": 128, "crop_min_scale": 0.4,
                        "method": "vicreg", "method_params": {"sim_coeff": 10.0,
                                                              "expander_dims": [512, 512]}})
    space = parse_space(doc, "s.yaml", exp)
    assert space.initial == ({"base_lr": 0.002},
                             {"base_lr": 0.004, "crop_min_scale": 0.4,  # batch 128: not a choice
                              "vicreg.sim_coeff": 10.0, "vicreg.cov_coeff": 1.0,
                              "vicreg.expander_dims": "[512, 512]"})  # Optuna's label
    # The point rebuilds the experiment's trial (batch size and all) through the searcher.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(dict(space.initial[1]))
    cfg = trial_from_config(space(study.ask()))
    assert (cfg.base_lr, cfg.crop_min_scale, cfg.weight_decay) == (0.004, 0.4, 1.0e-5)
    assert cfg.method_params["expander_dims"] == [512, 512]
    assert cfg.method_params["sim_coeff"] == 10.0 and cfg.method_params["cov_coeff"] == 1.0
    # A space that draws the method: one point per method.
    many = parse_space({"method": {"choice": ["simclr", "vicreg"]},
                        "methods": {"simclr": {"temperature": {"uniform": [0.1, 0.5]}}},
                        "initial": ["defaults"]}, "m.yaml")
    assert many.initial == ({"method": "simclr", "simclr.temperature": 0.2},
                            {"method": "vicreg"})
    # A method's own list default (a tuple in its dataclass) matches the YAML list choice.
    own = parse_space({"method": "vicreg", "methods": {"vicreg": {"expander_dims": {
        "choice": [[512, 512], [2048, 2048, 2048]]}}}, "initial": ["defaults"]}, "o.yaml")
    assert own.initial == ({"vicreg.expander_dims": "[2048, 2048, 2048]"},)


@pytest.mark.parametrize("name", ["simclr.yaml", "vicreg.yaml"])
def test_shipped_spaces_start_from_the_experiments_defaults(name: str) -> None:
    # Every parameter the shipped Fashion-MNIST-tuned spaces draw lies in range for the
    # experiment's values: the first trial is exactly the hand-picked configuration.
    exp = load_experiment("fashion_mnist")
    space = load_space(name, exp.trial)
    assert set(space.initial[0]) == set(space.dists(str(space.method)))


def test_sampler_is_seeded_tpe_with_the_liar_and_the_given_startup() -> None:
    sampler = optuna_sampler(3, 5)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    # Private attributes: TPESampler has no getters for them.
    assert sampler._n_startup_trials == 5 and sampler._constant_liar is True


def test_trial_status_is_epochs_trained_against_configured() -> None:
    config = {"_base": {"epochs": 4}, "method": "simclr"}
    assert configured_epochs(config) == 4
    assert configured_epochs({**config, "epochs": 2}) == 2  # a searched epochs wins
    assert configured_epochs({"method": "simclr"}) is None
    probe = {"probe_val_acc": 0.9, "probe_test_acc": 0.9}
    assert trial_status({"epoch": 4.0, **probe}, config) == FINISHED
    assert trial_status({"epoch": 4.0}, config) == FINISHED  # probe: false, every epoch
    assert trial_status({"epoch": 2.0}, config) == STOPPED_EARLY
    assert trial_status({"epoch": 2.0}, {**config, "epochs": 2}) == FINISHED
    assert trial_status({"epoch": 3.0, "failure_reason": "collapsed"}, config) == "collapsed"
    assert trial_status({"val_knn_acc": 0.0, "failure_reason": "nan_loss"}, config) == "nan_loss"
    assert trial_status({}, config) == STOPPED_EARLY
    # Without the configured epochs (a hand-built config) the probe decides.
    assert trial_status({"epoch": 3.0, **probe}, {}) == FINISHED
    assert trial_status({"epoch": 3.0}, {}) == STOPPED_EARLY


BAD: list[tuple[str, str]] = [
    ("method: vicreg\ntrial:\n  base_lr: {gaussian: [0, 1]}\n",
     "trial.base_lr: unknown distribution 'gaussian'; allowed: uniform, loguniform"),
    ("method: vicreg\ntrial:\n  base_lr: {uniform: [0.1, 0.01]}\n",
     "trial.base_lr.uniform: low 0.1 > high 0.01"),
    ("method: vicreg\ntrial:\n  base_lr: {loguniform: [0, 0.01]}\n",
     "a log scale needs low > 0, found low = 0"),
    ("method: vicregg\n", "method 'vicregg' is unknown; choose from:"),
    ("method: vicreg\nmethods:\n  vicreg:\n    lambda: {uniform: [1, 2]}\n",
     "unknown key methods.vicreg.lambda; valid keys: cov_coeff, expander_dims"),
    ("method: vicreg\ntrial:\n  batch_sise: 64\n", "unknown key trial.batch_sise; valid keys:"),
    ("method: vicreg\ntrial:\n  batch_size: {uniform: [32, 256]}\n",
     "trial.batch_size must be int; uniform gives 32.0"),
    ("method: vicreg\ntrial:\n  batch_size: sixty\n",
     "trial.batch_size must be int; found 'sixty'"),
    ("method: vicreg\ntrial:\n  base_lr: {uniform: [low, 1]}\n",
     "trial.base_lr.uniform must be [low, high] (numbers)"),
    ("", "the file is empty"),
    ("method: [vicreg\n", "not valid YAML (line 2)"),
    ("- 1\n- 2\n", "expected a mapping with keys method, trial, methods; found list"),
    ("method: vicreg\ntrial:\n  epochs: {int: [0, 3]}\n", "trial.epochs = 0 is out of range"),
    ("method: vicreg\ntrial:\n  precision: fp16\n",
     "trial.precision = 'fp16' is out of range; allowed: auto, bf16, fp32"),
    ("method: vicreg\nmethods:\n  simclr: {}\n", "methods.simclr is not a method this space draws"),
    ("methd: vicreg\n",
     "unknown key methd; valid keys: description, initial, method, methods, trial"),
    ("method: vicreg\ninitial: [default]\n",
     "initial must be a list of mappings of parameter names to values, or defaults"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_malformed_space_exits_2_with_one_line(text: str, needle: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert str(path) in err, "the message must name the file"
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_space_file_lists_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", "vicregg.yaml"]) == 2
    err = capsys.readouterr().err
    assert "space file 'vicregg.yaml' not found" in err and "vicreg" in err


@pytest.mark.parametrize("argv,needle", [
    (["--space", "vicreg", "--num-samples", "0"], "--num-samples: expected a whole number ≥ 1"),
    (["--space", "vicreg", "--gpus-per-trial", "-1"], "--gpus-per-trial: expected a number ≥ 0"),
    (["--space", "vicreg", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "--space is required"),
    (["--space", "vicreg", "--tracking-uri", "ftp://x"], "unsupported scheme"),
    (["--space", "vicreg", "--tracking-uri", "http://127.0.0.1:9"], "MLflow server unreachable"),
])
def test_bad_flags_exit_2_with_one_line(argv: list[str], needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                     st.text(max_size=8))
_docs = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4),
    st.dictionaries(st.sampled_from(["method", "trial", "methods", "vicreg", "simclr", "base_lr",
                                     "uniform", "choice", "loguniform", "int", "epochs",
                                     "batch_size", "temperature", "x"]), kids, max_size=4)),
                     max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_docs)
def test_random_documents_accept_or_raise_config_error(doc: Any) -> None:
    # Anything else escaping (TypeError, KeyError, ...) fails the test.
    with contextlib.suppress(ConfigError):
        parse_space(yaml.safe_load(yaml.safe_dump(doc)), "random.yaml")
