"""Sweeps saved before a module moved still resume: what their pickles name still loads.

``fixtures/pre_floors.pkl`` holds what a sweep's folder pickles (``tuner.pkl``: the searcher with
its space and distributions, the stoppers, the callbacks, the trial folder namer; the searcher's
state file: the space), written by ``fixtures/pre_floors.py`` with the flat modules of before
issue 32. Each object must load and go on working as the resumed sweep uses it; the old names
reach the moved modules through one table, ``sslsearch.moved.MOVED``, and nothing else uses them.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import pickletools
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sslsearch.moved import MOVED, MovedFinder

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "pre_floors.pkl"


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notes
        loaded: dict[str, Any] = pickle.loads(FIXTURE.read_bytes())
    return loaded


def test_the_space_and_its_distributions_load(saved: dict[str, Any]) -> None:
    from sslsearch.search.distributions import Dist
    from sslsearch.search.space import SearchSpace

    space = saved["space"]
    assert isinstance(space, SearchSpace) and space.method_names == ("simclr",)
    dists = space.dists("simclr")
    assert dists and all(isinstance(d, Dist) for d in dists.values())
    assert isinstance(saved["dist"], Dist) and saved["dist"].kind == "loguniform"


def test_the_searcher_resumes(saved: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    from sslsearch.results import configured_epochs
    from sslsearch.search.searchers import SSLOptunaSearch

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
    from sslsearch.search.stopping import BudgetStopper, CollapseStopper

    budget = saved["budget"]
    assert isinstance(budget, BudgetStopper) and isinstance(budget.inner, CollapseStopper)
    assert budget.spent == 3 and not budget.stop_all()
    # The collapse streak of one epoch, saved: a second collapsed epoch stops the trial.
    assert budget("t1", {"epoch": 4, "embed_std_ratio": 0.001, "effective_rank_ratio": 0.5})


def test_the_list_of_runs_goes_on_where_it_was(saved: dict[str, Any]) -> None:
    from ray.tune.search import Searcher

    from sslsearch.search.searchers import ConfigList

    runs = saved["runs"]
    assert isinstance(runs, ConfigList)
    assert runs.suggest("r2")["seed"] == 4 and runs.suggest("r3") == Searcher.FINISHED


def test_the_callbacks_and_the_folder_namer_load(saved: dict[str, Any]) -> None:
    from sslsearch.search.sweep import Progress
    from sslsearch.search.tracking import MLflowTrialCallback
    from sslsearch.search.trainable_workers import PlacementGroupReaper

    assert isinstance(saved["progress"], Progress) and saved["progress"].total == 4
    callback = saved["mlflow"]
    assert isinstance(callback, MLflowTrialCallback) and callback.sweep_id == "sweep-1"
    assert isinstance(saved["reaper"], PlacementGroupReaper)
    trial = SimpleNamespace(config={"method": "simclr"}, trial_id="abc")
    assert saved["dirname"](trial) == "simclr_abc"


def test_each_old_name_is_its_new_module() -> None:
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        assert sys.modules[old] is sys.modules[new]
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is a file again"


def test_the_table_holds_the_names_the_pickles_hold() -> None:
    """Every module the fixture's pickles name is in the table, and the table holds nothing else."""
    named = {arg for _, arg, _ in pickletools.genops(FIXTURE.read_bytes())
             if isinstance(arg, str) and arg.startswith("sslsearch.")}
    assert named == set(MOVED)


@pytest.mark.parametrize("module,name", [
    ("sslsearch.sweep", "SSLOptunaSearch"), ("sslsearch.sweep", "ConfigList"),
    ("sslsearch.sweep", "CollapseStopper"), ("sslsearch.sweep", "SearchSpace"),
    ("sslsearch.space", "Dist")])
def test_names_from_before_the_earlier_splits_still_resolve(module: str, name: str) -> None:
    """Sweeps older still, from before searchers.py and distributions.py, pickled these."""
    loaded = pickle.loads(f"c{module}\n{name}\n.".encode())  # protocol 0's GLOBAL
    assert loaded.__name__ == name and loaded.__module__.startswith("sslsearch.search.")


def test_sslsearch_evaluate_is_the_command_not_the_old_library() -> None:
    """The kNN/probe library left the name (trial/evaluation) for the transfer command."""
    assert "sslsearch.evaluate" not in MOVED
    assert MovedFinder().find_spec("sslsearch.evaluate", None) is None
    import sslsearch.evaluate

    assert hasattr(sslsearch.evaluate, "main") and not hasattr(sslsearch.evaluate, "linear_probe")


def test_nothing_imports_an_old_name() -> None:
    """The old names are for pickles only: the package, its tests and its tools import the new
    ones (the fixture's writer excepted: it names the old ones on purpose)."""
    found = []
    for path in [*(ROOT / "sslsearch").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        if path == ROOT / "tests" / "fixtures" / "pre_floors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n in MOVED]
    assert not found, "imports of old module names:\n" + "\n".join(found)
