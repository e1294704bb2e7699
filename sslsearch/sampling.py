"""Optuna's side of a search space: the seeded TPE sampler and its start-up, random draws from a
space, and fANOVA importances of finished trials. Optuna is imported inside each function, so
importing this module costs nothing (:mod:`sslsearch.results` and friends stay light)."""

from __future__ import annotations

from typing import Any

from sslsearch.space import Dist, SearchSpace, label


def param_importances(rows: list[tuple[dict[str, Any], float]], dists: dict[str, Dist]
                      ) -> dict[str, float]:
    """fANOVA importances of ``dists``' parameters over finished trials ``(params, value)``.

    The trials are replayed into a fresh Optuna study (``create_trial`` + ``add_trial``), so this
    works from Ray's results after the sweep. Raises ValueError/RuntimeError when fANOVA cannot
    fit (e.g. a degenerate forest).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for params, value in rows:
        study.add_trial(optuna.trial.create_trial(
            params={k: label(params[k]) for k in dists},
            distributions={k: d.distribution() for k, d in dists.items()}, value=value))
    values = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return {k: float(v) for k, v in values.items()}


def random_points(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` parameter sets drawn by Optuna's ``RandomSampler(seed)``, keyed (and labelled, for
    choices) as the space's Optuna trials name them: points the sweep's searcher evaluates."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed),
                                direction="maximize")
    points = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        points.append(dict(trial.params))
    return points


# ------------------------------------------------------------------------------------------------
# The sampler


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
    same posterior. Optuna 5 defaults to it; Optuna 4 (which pyproject allows) does not.
    """
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=n_startup_trials, constant_liar=True)
