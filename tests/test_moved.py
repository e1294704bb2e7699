"""Sweeps saved before a module moved still resume: what their pickles name still loads.

``fixtures/pre_floors.pkl`` holds what a sweep's folder pickles (``tuner.pkl``: the searcher with
its space and distributions, the stoppers, the callbacks, the trial folder namer; the searcher's
state file: the space), written by ``fixtures/pre_floors.py`` with the flat modules of before
issue 32. Each object must load and go on working as the resumed sweep uses it.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "pre_floors.pkl"


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes
        loaded: dict[str, Any] = pickle.loads(FIXTURE.read_bytes())
    return loaded


def test_the_space_and_its_distributions_load(saved: dict[str, Any]) -> None:
    from sslsearch.distributions import Dist
    from sslsearch.space import SearchSpace

    space = saved["space"]
    assert isinstance(space, SearchSpace) and space.method_names == ("simclr",)
    dists = space.dists("simclr")
    assert dists and all(isinstance(d, Dist) for d in dists.values())
    assert isinstance(saved["dist"], Dist) and saved["dist"].kind == "loguniform"


def test_the_searcher_resumes(saved: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    from sslsearch.results import configured_epochs
    from sslsearch.searchers import SSLOptunaSearch

    searcher = saved["searcher"]
    assert isinstance(searcher, SSLOptunaSearch)
    epochs = configured_epochs(saved["config"])  # the proposed trial ends: all its epochs trained
    searcher.on_trial_complete("t1", {"val_knn_acc": 0.5, "epoch": epochs})  # by its saved epochs
    assert searcher._ot_study.trials[0].state == TrialState.COMPLETE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = searcher.suggest("t2")
    assert isinstance(config, dict) and config["method"] == "simclr"


def test_the_stoppers_keep_their_counts(saved: dict[str, Any]) -> None:
    from sslsearch.stopping import BudgetStopper, CollapseStopper

    budget = saved["budget"]
    assert isinstance(budget, BudgetStopper) and isinstance(budget.inner, CollapseStopper)
    assert budget.spent == 3 and not budget.stop_all()
    # The collapse streak of one epoch, saved: a second collapsed epoch stops the trial.
    assert budget("t1", {"epoch": 4, "embed_std_ratio": 0.001, "effective_rank_ratio": 0.5})


def test_the_list_of_runs_goes_on_where_it_was(saved: dict[str, Any]) -> None:
    from ray.tune.search import Searcher

    from sslsearch.searchers import ConfigList

    runs = saved["runs"]
    assert isinstance(runs, ConfigList)
    assert runs.suggest("r2")["seed"] == 4 and runs.suggest("r3") == Searcher.FINISHED


def test_the_callbacks_and_the_folder_namer_load(saved: dict[str, Any]) -> None:
    from sslsearch.sweep import Progress
    from sslsearch.tracking import MLflowTrialCallback
    from sslsearch.trainable_workers import PlacementGroupReaper

    assert isinstance(saved["progress"], Progress) and saved["progress"].total == 4
    callback = saved["mlflow"]
    assert isinstance(callback, MLflowTrialCallback) and callback.sweep_id == "sweep-1"
    assert isinstance(saved["reaper"], PlacementGroupReaper)
    trial = SimpleNamespace(config={"method": "simclr"}, trial_id="abc")
    assert saved["dirname"](trial) == "simclr_abc"
