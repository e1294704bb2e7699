"""How much was there to find? The search benchmark's confirmations (:mod:`sslsearch.bench.search`).

- Every strategy run's answer is confirmed as the sweep confirms its own
  (:mod:`sslsearch.search.confirm`): its top K configurations on the benchmark's fresh seeds, the
  winner by its mean. The default strategy's answer is the default configuration itself.
- The **reference**: a large random search (``--reference-trials``, every trial to its last
  epoch), its top ``--reference-top`` confirmed on the same fresh seeds: the best configuration the
  space holds, as far as the benchmark can tell.
- **Headroom** = the reference's best confirmed mean − the default configuration's confirmed mean;
  **regret** of a strategy = the reference's best − its confirmed winner's mean (also as a
  fraction of the headroom). "TPE beat the default by 0.6" then says whether there were 0.7 or 5
  points to find.

Every configuration is trained once per fresh seed, however many runs picked it: CPU training is
deterministic (the same configuration and seed give the same run), so a second confirmation of
the same configuration reads the first's runs (:class:`Confirmer`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from sslsearch.bench.search_report import drop_checkpoints
from sslsearch.results import TrialRecord, number, record
from sslsearch.search import confirm
from sslsearch.search.confirm import Candidate, Confirmation, Stat


def _stat_json(s: Stat | None) -> dict[str, Any] | None:
    return None if s is None else dataclasses.asdict(s)


@dataclasses.dataclass
class Confirmer:
    """Runs candidates on the fresh ``seeds`` through the sweep's runs tuner, each configuration
    once (its runs kept by configuration)."""

    p: Any  # the benchmark's Plan
    seeds: list[int]
    done: list[tuple[dict[str, Any], list[TrialRecord]]] = dataclasses.field(
        default_factory=list)
    trained: int = 0  # confirmation runs actually trained

    def _known(self, config: dict[str, Any]) -> list[TrialRecord] | None:
        return next((runs for c, runs in self.done if confirm.same_configuration(c, config)),
                    None)

    def run(self, candidates: Sequence[Candidate], name: str) -> None:
        """Fill each candidate's runs, training only the configurations not confirmed yet."""
        from sslsearch.search import sweep
        from sslsearch.search.space import trial_keys

        todo = [c for c in candidates if self._known(c.config) is None]
        if todo:
            p = self.p
            results = sweep.fit_all(sweep.build_runs_tuner(
                confirm.run_configs(todo, self.seeds), p.exp, str(p.folder), f"confirm-{name}",
                p.name, p.tracking_uri, p.mlflow_experiment, p.quiet))
            if not p.keep_checkpoints:
                drop_checkpoints(p.folder / f"confirm-{name}")
            runs = [record(r, confirm.STAGE, trial_keys(p.space)) for r in results]
            self.trained += len(runs)
            for c in todo:
                self.done.append((dict(c.config), [r for r in runs
                                                   if r.config.get(confirm.CANDIDATE_KEY) ==
                                                   c.label]))
        for c in candidates:
            c.runs = list(self._known(c.config) or [])

    def confirm(self, search: Sequence[TrialRecord], top: int, name: str,
                defaults: dict[str, Any] | None = None) -> Confirmation:
        s = self.p.exp.search
        candidates = confirm.plan(search, s.metric, s.mode, top, defaults)
        self.run(candidates, name)
        return Confirmation(s.metric, s.mode, self.seeds, top, candidates)

    def defaults(self) -> Candidate:
        """The default configuration on the fresh seeds."""
        c = Candidate(confirm.DEFAULTS, self.p.space.fixed(self.p.method))
        self.run([c], "defaults")
        return c


def confirm_run(confirmer: Confirmer, strategy: str, records: Sequence[TrialRecord],
                name: str) -> Confirmation:
    """A strategy run's answer confirmed: its top K (the default strategy: the default
    configuration, which all its runs are)."""
    p = confirmer.p
    if strategy == "default":
        best = records[0] if records else None
        candidates = [Candidate("1", p.space.fixed(p.method), best)] if best else []
        confirmer.run(candidates, name)
        s = p.exp.search
        return Confirmation(s.metric, s.mode, confirmer.seeds, 1, candidates)
    return confirmer.confirm(records, p.confirm_top, name)


def confirmed_row(conf: Confirmation, reference_best: float | None) -> dict[str, Any]:
    """What a run's confirmation adds to its row: the winner, its mean and regret, the search's
    optimism (fractions, like the accuracies)."""
    win = conf.winner
    s = win.stat(conf.metric) if win is not None else None
    regret = None if s is None or reference_best is None else reference_best - s.mean
    return {"winner": None if win is None or win.source is None else win.source.trial_id,
            "stat": _stat_json(s), "values": {} if win is None else win.values(conf.metric),
            "regret": regret, "optimism": conf.optimism}


def reference(confirmer: Confirmer, records: Sequence[TrialRecord], top: int,
              defaults: Candidate) -> dict[str, Any]:
    """The reference search's top ``top`` confirmed (the defaults beside them): its best
    confirmed mean, the headroom over the defaults, every candidate's statistics."""
    conf = confirmer.confirm(records, top, "reference")
    metric = conf.metric
    pool = [*conf.ranked(), defaults]
    sign = 1.0 if conf.mode == "max" else -1.0

    def mean(c: Candidate) -> float:
        s = c.stat(metric)
        return sign * s.mean if s is not None else -math.inf

    best = max(pool, key=mean)
    best_stat, default_stat = best.stat(metric), defaults.stat(metric)
    headroom = confirm.paired(best.values(metric), defaults.values(metric))
    return {
        "trials": len(records),
        "finished": sum(r.status == "finished" for r in records),
        "best_single_seed": max((v for r in records
                                 if (v := number(r.metrics.get(metric))) is not None),
                                default=None),
        "candidates": [{"name": c.name, "stat": _stat_json(c.stat(metric)),
                        "params": c.source.params if c.source else {}} for c in conf.ranked()],
        "best": {"name": best.name, "stat": _stat_json(best_stat),
                 "params": best.source.params if best.source else {}},
        "defaults": {"stat": _stat_json(default_stat)},
        "headroom": _stat_json(headroom),
    }
