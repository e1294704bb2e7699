"""What Optuna computes over a search space besides the sweep's TPE
(:mod:`sslsearch.search.searchers`): seeded random draws (``bench search``'s random strategy) and
fANOVA importances (the report). Torch-free and Ray-free; Optuna is imported when called."""

from __future__ import annotations

from typing import Any

from sslsearch.search.distributions import Dist, label
from sslsearch.search.space import SearchSpace


def optuna_distribution(d: Dist) -> Any:
    """``d`` as an ``optuna.distributions`` object (what ``Dist.suggest`` draws)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    a = d.args
    if d.kind in ("uniform", "loguniform", "quantized"):
        return FloatDistribution(a[0], a[1], log=d.kind == "loguniform",
                                 step=a[2] if d.kind == "quantized" else None)
    if d.kind in ("int", "logint"):
        return IntDistribution(a[0], a[1], log=d.kind == "logint")
    return CategoricalDistribution([label(v) for v in a])


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
            distributions={k: optuna_distribution(d) for k, d in dists.items()},
            value=value))
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
