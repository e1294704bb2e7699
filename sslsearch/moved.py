"""The old names of moved modules that a saved sweep's pickles hold, still importable.

Ray Tune pickles a sweep's objects into its folder by their module's name: ``tuner.pkl`` holds the
searcher (:class:`~sslsearch.search.searchers.SSLOptunaSearch`) with its search space and its
distributions, the stoppers, the callbacks and the trial folder namer of
:mod:`sslsearch.search.sweep`; the searcher's state file holds the space. A sweep saved before the
modules moved into their floors (issue 32) names the flat modules (``sslsearch.space``, ...), and
``--resume`` must still load it. :class:`MovedFinder` answers for those old names only, with the
module that now holds the code, so ``sys.modules[old] is sys.modules[new]``: one module and one
class whichever name a pickle uses (and what is pickled again names the new module).

Only the names a pickle can hold are here, found by reading a real sweep's pickles; the package
and its tests import the new names (tests/test_moved.py loads ``tests/fixtures/pre_floors.pkl``,
written before the move, and checks that nothing imports an old name). ``sslsearch.evaluate`` is
not among them: that name is kept free for a command.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED = {
    "sslsearch.distributions": "sslsearch.search.distributions",  # Dist
    "sslsearch.searchers": "sslsearch.search.searchers",  # SSLOptunaSearch, ConfigList
    "sslsearch.space": "sslsearch.search.space",  # SearchSpace (and Dist, from before)
    "sslsearch.stopping": "sslsearch.search.stopping",  # CollapseStopper, BudgetStopper
    "sslsearch.sweep": "sslsearch.search.sweep",  # Progress, the folder namer (and older names)
    "sslsearch.tracking": "sslsearch.search.tracking",  # MLflowTrialCallback
    "sslsearch.trainable_workers": "sslsearch.search.trainable_workers",  # PlacementGroupReaper
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new one."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None  # a placeholder, replaced in exec_module

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns what sys.modules holds under the name once this returns.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED`, before any other finder: an old name is always its
    new module, never a file another copy of the package (an editable install, a stale folder)
    still has under that name."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); it answers for :data:`MOVED`'s names
    alone, with one dictionary lookup for any other."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
