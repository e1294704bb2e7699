"""The searchers a sweep's Tuner asks for configurations: Optuna's TPE as the sweep runs it
(:class:`SSLOptunaSearch`, its seeded sampler and the size of its random start-up) and a fixed
list of runs (:class:`ConfigList`: confirmation runs, a strategy's seeds)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sslsearch.errors import CONFIG_FAULTS
from sslsearch.results import FINISHED, configured_epochs, trial_status


class SSLOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told how each trial really ended.

    - Every epoch's metric is reported to the Optuna trial as an intermediate value at
      ``step = epoch`` (Tune withholds the result it stops a trial on from ``on_trial_result``,
      so the last one is reported on completion).
    - A trial that trained all its configured epochs is COMPLETE with its final value; one that
      ended before (ASHA stopped it) is PRUNED, so TPE does not learn a grace-period value as if
      it were final (Ray's OptunaSearch marks it COMPLETE with its last result). The rule is
      :func:`sslsearch.results.trial_status`, with the epochs recorded when the trial was proposed.
    - A trial that diverged or collapsed (a ``failure_reason`` in :data:`CONFIG_FAULTS`) is
      PRUNED and infeasible (``Trial.set_constraint(reason, 1.0)``): TPE ranks it below every
      trial that trained and proposes away from it (as FAIL, TPE never saw it and kept proposing
      the learning rates that collapse). Out of memory or an error is FAIL. Neither is ever given
      its placeholder metric as a value.

    The recorded epochs are part of the searcher's state, saved and restored with it on resume.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import optuna

        # Optuna configures its logger at INFO when first used: its "A new study created in
        # memory" line is noise on the sweep's console (sslsearch.console).
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        super().__init__(*args, **kwargs)
        self._planned_epochs: dict[str, int | None] = {}

    def _planned(self) -> dict[str, int | None]:
        # A searcher pickled by an older version (a sweep resumed across an upgrade) lacks it.
        planned: dict[str, int | None] = self.__dict__.setdefault("_planned_epochs", {})
        return planned

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config: dict[str, Any] | None = super().suggest(trial_id)
        if isinstance(config, dict):
            self._planned()[trial_id] = configured_epochs(config)
        return config

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        """The epoch's metric as the Optuna trial's intermediate value at ``step = epoch``."""
        value = result.get(self.metric)
        step = result.get("epoch", result.get("training_iteration"))
        if (trial_id not in self._ot_trials or result.get("failure_reason")
                or not isinstance(value, int | float) or not math.isfinite(value)
                or not isinstance(step, int | float)):
            return
        with warnings.catch_warnings():
            # A trial restarted from its checkpoint repeats an epoch: Optuna keeps the first.
            warnings.simplefilter("ignore")
            self._ot_trials[trial_id].report(float(value), int(step))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)  # Ray's warning / KeyError
            return
        planned = self._planned().pop(trial_id, None)
        reason = (result or {}).get("failure_reason")
        if not error and reason in CONFIG_FAULTS:
            self._ot_trials[trial_id].set_constraint(reason, 1.0)  # > 0: infeasible
            super().on_trial_complete(trial_id, None)  # PRUNED
        elif error or reason:
            super().on_trial_complete(trial_id, None, error=True)  # FAIL
        elif result:
            self._report(trial_id, result)
            # Epochs unknown (proposed by an older version): trial_status uses the probe.
            config = {} if planned is None else {"epochs": planned}
            if trial_status(result, config) == FINISHED:
                super().on_trial_complete(trial_id, result)  # COMPLETE, the final value
            else:
                super().on_trial_complete(trial_id, None)  # no value: Ray tells PRUNED
        else:
            super().on_trial_complete(trial_id, None)  # never reported (removed): PRUNED


def n_startup_trials(num_samples: int, dims: int) -> int:
    """Random trials before TPE models anything: ``clamp(2·dims, 4, 10)``, at most a third of
    the budget, at least 1.

    Two random points per searched dimension (the usual size of an initial design, e.g. TuRBO's
    2·d), at least 4 and at most Optuna's default of 10; but never more than ``num_samples // 3``,
    so that two thirds of a small budget are still proposed by TPE (a fixed 4 spent a 3-trial
    search on random draws), and at least 1, as TPE needs an observation. Points from the space's
    ``initial:`` list count towards it (Optuna counts every finished trial).
    """
    design = min(10, max(4, 2 * dims))
    return max(1, min(design, num_samples // 3))


def optuna_sampler(seed: int, n_startup_trials: int) -> Any:
    """The seeded multivariate TPE sampler; ``group=True`` handles the conditional sub-spaces.

    ``constant_liar=True``: trials still running count as bad results, so trials proposed while
    others run (``max_concurrent > 1``) are pushed away from them instead of being drawn from the
    same posterior (Optuna 5's default, stated).
    """
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=n_startup_trials, constant_liar=True)


class ConfigList(Searcher):
    """Proposes the given trial configs in order, then FINISHED: a fixed list of runs (a search's
    candidates on fresh seeds, the default configuration's seeds). Its position is saved with the
    experiment (as JSON, not a pickle), so a resumed list proposes the rest, each once."""

    def __init__(self, configs: Sequence[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.configs = [dict(c) for c in configs]
        self.position = 0

    def suggest(self, trial_id: str) -> Any:  # a config, or Searcher.FINISHED (a string)
        if self.position >= len(self.configs):
            return Searcher.FINISHED
        self.position += 1
        return dict(self.configs[self.position - 1])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        pass  # nothing to learn: the list is fixed

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"configs": self.configs,
                                                     "position": self.position}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.position = state["configs"], int(state["position"])
