"""The equal-budget accounting of ``python -m sslsearch.bench search``: pure functions.

A budget is counted in trial-epochs (pretraining epochs actually trained, summed over trials).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Budget:
    """One budget of the benchmark: ``trial_epochs`` per strategy and search seed."""

    trial_epochs: int
    epochs: int  # one trial's
    default_seeds: int  # runs of the default configuration per search seed
    tpe_cap: int  # num_samples of random and tpe_asha: a cap the budget reaches first

    @property
    def trials(self) -> int:
        """The budget in whole trials."""
        return runs_for_budget(self.trial_epochs, self.epochs)

    def to_json(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "trials": self.trials}


def runs_for_budget(budget: int, epochs: int) -> int:
    """Whole trials of ``epochs`` that fit in ``budget`` trial-epochs (``default``, ``random``)."""
    return budget // epochs


def tpe_trial_cap(budget: int, epochs: int, grace_period: int, max_concurrent: int) -> int:
    """``num_samples`` for ``tpe_asha``: a cap the budget reaches first. ASHA never stops a trial
    before its grace period, so no trial that reports spends fewer than ``min(grace, epochs)``
    epochs; the extra ``max_concurrent`` covers the trials running when the budget runs out."""
    return math.ceil(budget / max(1, min(grace_period, epochs))) + max_concurrent


def within_one_trial(spent: int, budget: int, epochs: int) -> bool:
    """The equal-budget rule: ``|spent − budget| ≤ epochs`` (one trial's epochs)."""
    return abs(spent - budget) <= epochs


def best_so_far(events: Sequence[tuple[float, str, int, float | None, bool]]
                ) -> list[float | None]:
    """The best-so-far curve: element ``x − 1`` is the best val kNN among the trials that had
    finished (trained all their epochs) after ``x`` trial-epochs, None before the first.

    ``events``: one per trial-epoch, ``(time, trial_id, epoch, val_knn, finishes_the_trial)``;
    they are ordered by time (then trial and epoch), each counting one trial-epoch.
    """
    best: float | None = None
    curve: list[float | None] = []
    for _, _, _, value, final in sorted(events, key=lambda e: (e[0], e[1], e[2])):
        if final and value is not None and (best is None or value > best):
            best = value
        curve.append(best)
    return curve
