"""Confirmation runs through Tune: a search's candidates (:mod:`sslsearch.search.confirm` picks
them) re-run on fresh seeds, as trials of the sweep like any other (the same trainable, the same
MLflow parent, resumed after a kill like the search)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sslsearch.config import Experiment
from sslsearch.results import TrialRecord, record, select_best
from sslsearch.search import confirm
from sslsearch.search.space import SearchSpace

CONFIRM_RUN = "confirm"  # the Tune experiment's folder under the sweep's


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the confirmation runs go: Tune's experiment ``storage/run_name``, logged as children
    of the MLflow sweep ``sweep_name`` through the tracking outbox ``outbox``."""

    storage: str
    run_name: str
    sweep_name: str
    tracking_uri: str
    mlflow_experiment: str
    outbox: Path
    quiet: bool = False
    # The folder holding the sweep file, to restore an interrupted confirmation from (None: a
    # comparison, which is not resumed).
    record: Path | None = None


def confirm_search(search: Sequence[TrialRecord], space: SearchSpace, exp: Experiment,
                   target: Target, keys: Sequence[str] = ()
                   ) -> tuple[confirm.Confirmation | None, list[Any]]:
    """The search's top ``confirm_top`` configurations and the experiment's own (of the best
    trial's method), each on ``confirm_seeds`` fresh seeds; the confirmation and Tune's results
    (None and [] when no trial is eligible)."""
    from sslsearch.search import sweep

    s = exp.search
    best = select_best(search, s.metric, s.mode)
    if best is None:
        print("confirmation: no trial is eligible (none finished or was stopped early with a "
              "value): nothing to confirm", flush=True)
        return None, []
    candidates = confirm.plan(search, s.metric, s.mode, s.top_k, space.fixed(best.method))
    used = {t.seed for t in search if t.seed is not None} | {exp.trial.seed}
    seeds = confirm.fresh_seeds(used, s.confirm_seeds)
    configs = confirm.run_configs(candidates, seeds)
    print(f"\nconfirmation: {', '.join(c.name for c in candidates)} on fresh seeds "
          f"{', '.join(map(str, seeds))} ({len(configs)} runs of {exp.trial.epochs} epochs)",
          flush=True)
    folder = Path(target.storage) / target.run_name
    if target.record is not None and sweep.has_tune_state(folder):
        tuner = sweep.restore_tuner(folder, target.record)
    else:
        tuner = sweep.build_runs_tuner(configs, exp, target.storage, target.run_name,
                                       target.sweep_name, target.tracking_uri,
                                       target.mlflow_experiment, target.quiet, target.outbox)
    results = sweep.fit_all(tuner)
    confirm.attach(candidates, [record(r, confirm.STAGE, keys) for r in results])
    return confirm.Confirmation(s.metric, s.mode, seeds, s.top_k, candidates), results
