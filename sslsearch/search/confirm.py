"""Confirmation on fresh seeds: is the search's answer more than seed luck?

The best of N trials at one seed is optimistic by about the seed spread (the winner's curse). So
after a search, the top K configurations by the one selection rule
(:func:`sslsearch.results.eligible`) are re-run with N seeds the search never used, beside the
experiment's own configuration on the same seeds (the ``defaults``), and:

- each candidate gets its mean ± sd over those seeds and a 95 % t-interval of that mean;
- the **winner** is the candidate with the best mean (ties: the search's order); the defaults are
  a reference, never the winner, unless they were one of the search's top K themselves;
- the winner's **paired** difference against the runner-up and against the defaults, seed by seed
  (the same seeds for every configuration), with its 95 % t-interval; a difference whose interval
  holds 0 is "not distinguishable from zero", and the text says so;
- the search's **optimism**: its best single-seed value minus the confirmed mean of that same
  configuration (positive: the search seed flattered it).

Pure Python (no torch, Ray or Optuna): the sweep (:mod:`sslsearch.run`), ``--compare``, the search
benchmark and the selection simulation (:mod:`sslsearch.bench.selection`) all decide through it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sslsearch.results import FINISHED, TrialRecord, eligible, fmt_delta, number

STAGE = "confirm"  # the config key ``_stage`` of a confirmation run, and its MLflow tag
DEFAULTS = "defaults"  # the label of the experiment's own configuration
# Config keys the confirmation adds to a run's Ray config (ignored by trial_from_config, which
# skips keys that start with "_"): which candidate it confirms, and that it is a confirmation.
CANDIDATE_KEY = "_candidate"
STAGE_KEY = "_stage"

# Two-sided 95 % quantiles of Student's t for 1-30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (a table to 30, then
    the Cornish-Fisher expansion around the normal's 1.96, within 1e-3 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df} < 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean, sample sd (ddof 1) and the 95 % t-interval of the mean of ``n`` values (no interval
    from a single value)."""

    mean: float
    sd: float
    n: int
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def stat(values: Iterable[float]) -> Stat | None:
    vals = [v for v in values if number(v) is not None]
    if not vals:
        return None
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return Stat(mean, 0.0, 1, None, None)
    sd = statistics.stdev(vals)
    half = t975(len(vals) - 1) * sd / math.sqrt(len(vals))
    return Stat(mean, sd, len(vals), mean - half, mean + half)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Stat | None:
    """``a − b`` seed by seed over the seeds both have (a paired t-interval)."""
    return stat([a[s] - b[s] for s in sorted(a.keys() & b.keys())])


def fresh_seeds(used: Iterable[int], n: int) -> list[int]:
    """``n`` seeds after every seed in ``used``: seeds the search never trained with."""
    start = max(used, default=-1) + 1
    return list(range(start, start + n))


@dataclasses.dataclass
class Candidate:
    """One configuration on the fresh seeds: a search trial's (``source``) or the defaults'."""

    label: str  # "1", "2", ... (its rank in the search) or DEFAULTS
    config: dict[str, Any]  # its Ray config, without seed
    source: TrialRecord | None = None  # the search trial it came from (None: the defaults)
    runs: list[TrialRecord] = dataclasses.field(default_factory=list)
    also_defaults: bool = False  # a search candidate that is the experiment's configuration

    def values(self, metric: str) -> dict[int, float]:
        """Seed → the metric of each finished confirmation run."""
        out = {}
        for run in self.runs:
            v = number(run.metrics.get(metric))
            if run.status == FINISHED and v is not None and run.seed is not None:
                out[run.seed] = v
        return out

    def stat(self, metric: str) -> Stat | None:
        return stat(self.values(metric).values())

    @property
    def name(self) -> str:
        if self.source is None:
            return DEFAULTS
        also = ", the defaults" if self.also_defaults else ""
        return f"#{self.label} ({self.source.trial_id}{also})"


def same_configuration(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two Ray configs train the same trial, seeds aside (a method parameter set to its
    default equals one left out)."""
    from sslsearch import methods
    from sslsearch.search.space import trial_from_config

    def resolved(config: Mapping[str, Any]) -> tuple[Any, Any]:
        cfg = trial_from_config(config)
        own = methods.method_config(cfg.method, cfg.method_params)
        return dataclasses.replace(cfg, seed=0, method_params={}), own

    return resolved(a) == resolved(b)


def plan(search: Sequence[TrialRecord], metric: str, mode: str, top: int,
         defaults: Mapping[str, Any] | None) -> list[Candidate]:
    """The candidates: the top ``top`` eligible trials (fewer when fewer are eligible), then the
    defaults (``defaults``: their Ray config), unless one of the candidates already is them."""
    out = []
    for rank, trial in enumerate(eligible(search, metric, mode)[:top], start=1):
        config = {k: v for k, v in trial.config.items() if k != "seed"}
        out.append(Candidate(str(rank), config, trial))
    if defaults is not None:
        base = {k: v for k, v in defaults.items() if k != "seed"}
        twin = next((c for c in out if same_configuration(c.config, base)), None)
        if twin is not None:
            twin.also_defaults = True
        else:
            out.append(Candidate(DEFAULTS, base))
    return out


def run_configs(candidates: Sequence[Candidate], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The Ray configs to train: every candidate on every seed, seed-major (so an interrupted
    confirmation has compared its candidates on the same first seeds)."""
    return [{**c.config, "seed": seed, STAGE_KEY: STAGE, CANDIDATE_KEY: c.label}
            for seed in seeds for c in candidates]


def attach(candidates: Sequence[Candidate], runs: Sequence[TrialRecord]) -> None:
    by_label = {c.label: c for c in candidates}
    for run in runs:
        owner = by_label.get(str(run.config.get(CANDIDATE_KEY)))
        if owner is not None:
            owner.runs.append(run)


@dataclasses.dataclass
class Confirmation:
    """The confirmation of one search: its candidates (search order, the defaults last), the
    seeds, and what follows from them."""

    metric: str
    mode: str
    seeds: list[int]
    top: int  # K as asked; fewer candidates when fewer trials were eligible
    candidates: list[Candidate]

    @property
    def searched(self) -> list[Candidate]:
        return [c for c in self.candidates if c.source is not None]

    @property
    def defaults(self) -> Candidate | None:
        return next((c for c in self.candidates if c.source is None or c.also_defaults), None)

    def _better(self, c: Candidate) -> tuple[float, int]:
        s = c.stat(self.metric)
        sign = -1.0 if self.mode == "max" else 1.0
        return (sign * s.mean if s is not None else math.inf,
                int(c.label) if c.label.isdigit() else 10**6)

    def ranked(self) -> list[Candidate]:
        """Every candidate with a confirmed run, the defaults too, best confirmed mean first."""
        return sorted([c for c in self.candidates if c.stat(self.metric) is not None],
                      key=self._better)

    @property
    def winner(self) -> Candidate | None:
        pool = [c for c in self.ranked() if c.source is not None]
        return pool[0] if pool else None

    @property
    def runner_up(self) -> Candidate | None:
        pool = [c for c in self.ranked() if c.source is not None]
        return pool[1] if len(pool) > 1 else None

    def versus(self, other: Candidate | None) -> Stat | None:
        """The winner minus ``other``, seed by seed."""
        win = self.winner
        if win is None or other is None or other is win:
            return None
        return paired(win.values(self.metric), other.values(self.metric))

    @property
    def optimism(self) -> float | None:
        """The search's best single-seed value minus that configuration's confirmed mean, signed
        so that positive means the search seed flattered it."""
        first = next((c for c in self.searched if c.label == "1"), None)
        s = first.stat(self.metric) if first is not None else None
        value = number(first.source.metrics.get(self.metric)) if first and first.source else None
        if s is None or value is None:
            return None
        return (value - s.mean) if self.mode == "max" else (s.mean - value)

    def export_run(self) -> TrialRecord | None:
        """The winner's run whose value is nearest its mean (ties: the smaller seed): the one
        whose encoder is exported."""
        win = self.winner
        s = win.stat(self.metric) if win is not None else None
        if win is None or s is None:
            return None
        runs = [r for r in win.runs if r.seed in win.values(self.metric)]
        return min(runs, key=lambda r: (abs(float(r.metrics[self.metric]) - s.mean),
                                        r.seed or 0))


# ------------------------------------------------------------------------------------------------
# How a statistic is shown (the report's own text: confirm_report.py)


def scale(metric: str) -> tuple[float, str]:
    """Accuracies are shown in % and their differences in points; other metrics as they are."""
    return (100.0, " points") if metric.endswith("_acc") else (1.0, "")


def fmt_stat(s: Stat | None, metric: str) -> str:
    if s is None:
        return "n/a"
    k, _ = scale(metric)
    return f"{s.mean * k:.2f} ± {s.sd * k:.2f}"


def fmt_interval(s: Stat | None, metric: str, signed: bool = False) -> str:
    if s is None or s.low is None or s.high is None:
        return "n/a (one run)" if s is not None else "n/a"
    k, _ = scale(metric)
    if signed:
        return f"[{fmt_delta(s.low * k, 2)}, {fmt_delta(s.high * k, 2)}]"
    return f"[{s.low * k:.2f}, {s.high * k:.2f}]"


# ------------------------------------------------------------------------------------------------
# The answer: what best_experiment.yaml, the exported encoder and the sweep's MLflow run carry


@dataclasses.dataclass(frozen=True)
class Choice:
    """The sweep's answer: the search trial whose configuration won, and the run whose encoder is
    exported (that trial itself, or the confirmed winner's run nearest its mean)."""

    trial_id: str
    run: TrialRecord
    how: str  # how it was chosen, in one sentence (best_experiment.yaml's description)
    value: float | None  # the value it was chosen on: the confirmed mean, or the search's value

    @property
    def config(self) -> dict[str, Any]:
        """The exported run's Ray config, its seed kept, the confirmation's own keys dropped."""
        return {k: v for k, v in self.run.config.items() if k not in (STAGE_KEY, CANDIDATE_KEY)}


def choose(search: Sequence[TrialRecord], metric: str, mode: str,
           confirmation: Confirmation | None = None) -> Choice | None:
    """The confirmed winner when there is one, else the search's best by the selection rule."""
    win = confirmation.winner if confirmation is not None else None
    run = confirmation.export_run() if confirmation is not None else None
    if confirmation is not None and win is not None and win.source is not None and run:
        s = win.stat(metric)
        assert s is not None  # a winner has finished runs
        how = (f"confirmed winner {win.name}: {metric} {fmt_stat(s, metric)} over fresh seeds "
               f"{', '.join(map(str, sorted(win.values(metric))))} (95 % interval "
               f"{fmt_interval(s, metric)}); encoder of its seed-{run.seed} run, the nearest to "
               "that mean")
        return Choice(win.source.trial_id, run, how, s.mean)
    best = next(iter(eligible(search, metric, mode)), None)
    if best is None:
        return None
    value = number(best.metrics.get(metric))
    probe = f", probe val acc {best.probe_val_acc:.4g}" if best.probe_val_acc is not None else ""
    how = (f"best trial {best.trial_id} by {metric} at the search's seed "
           f"({value if value is None else f'{value:.4g}'}{probe}), not confirmed on other seeds")
    return Choice(best.trial_id, best, how, value)


def parent_record(choice: Choice | None, conf: Confirmation | None, metric: str
                  ) -> tuple[dict[str, str], dict[str, float]]:
    """The tags and metrics the sweep's MLflow run gets: which trial won, how, and the
    confirmation's figures (the optimism, the paired differences)."""
    if choice is None:
        return {"sslsearch.selection": "none eligible"}, {}
    tags = {"sslsearch.best_trial_id": choice.trial_id,
            "sslsearch.best_run_trial_id": choice.run.trial_id,
            "sslsearch.selection": choice.how[:5000]}
    metrics = {f"best.{metric}": choice.value} if choice.value is not None else {}
    if conf is not None and conf.winner is not None:
        win = conf.winner.stat(metric)
        figures = {f"confirm.{metric}.sd": win.sd if win else None,
                   "confirm.optimism": conf.optimism,
                   "confirm.vs_runner_up": _mean(conf.versus(conf.runner_up)),
                   "confirm.vs_defaults": _mean(conf.versus(conf.defaults))}
        metrics |= {k: v for k, v in figures.items() if v is not None}
    return tags, metrics


def _mean(s: Stat | None) -> float | None:
    return None if s is None else s.mean
