"""Does confirmation on fresh seeds pick the truly best configuration more often? A simulation.

    python -m sslsearch.bench selection --configs 12 --seed-sd 0.6 --spread 3 --repeats 4000

A fake search whose answer is known: ``--configs`` configurations with true means (val kNN, in
points) ``80 − spread × u``, ``u ~ U(0, 1)`` (so the good ones lie within about a point of each
other, as on Fashion-MNIST), and seed noise ``N(0, seed_sd²)`` on every run (0.4-0.9 points
there). Each repeat draws the true means, then one search at one seed, and compares

* **one seed**: the best trial of the search by the selection rule
  (:func:`sslsearch.results.select_best`), reported at its search value;
* **confirmed**: the product's procedure (:mod:`sslsearch.search.confirm`): the top ``--top`` trials
  re-run on ``--seeds`` fresh seeds, the winner by its mean, reported at that mean;

through the same code the sweep runs, on :class:`~sslsearch.results.TrialRecord` objects. Per
procedure: how often it picks the truly best configuration, the true regret (best true mean
minus the picked one's), and its optimism (the reported value minus the picked configuration's
true mean: what the answer promises and will not keep).

No torch, Ray or Optuna: pure Python, seconds for thousands of repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from sslsearch.cli import positive_int
from sslsearch.errors import ConfigError, OneLineParser, exit_code
from sslsearch.results import FINISHED, TrialRecord, select_best
from sslsearch.search.confirm import Candidate, Confirmation, plan

METRIC = "val_knn_acc"


@dataclasses.dataclass(frozen=True)
class Setting:
    configs: int = 12  # trials of the search
    spread: float = 3.0  # true means 80 − spread × U(0, 1), points
    seed_sd: float = 0.6  # seed-to-seed sd of one run, points
    top: int = 2  # K
    seeds: int = 3  # N
    repeats: int = 4000
    seed: int = 0


def _trial(i: int, value: float, seed: int | None = None, stage: str = "search") -> TrialRecord:
    return TrialRecord(method="fake", trial_id=f"t{i:03d}", stage=stage, params={"i": i},
                       config={"method": "fake", "i": i}, status=FINISHED, epochs=[1.0],
                       val_knn=[value], seconds=0.0, metrics={METRIC: value}, seed=seed)


def one_repeat(s: Setting, rng: random.Random) -> dict[str, float]:
    """One search: the truth, the one-seed pick and the confirmed pick (values in points)."""
    truth = [80.0 - s.spread * rng.random() for _ in range(s.configs)]
    noisy = [mu + rng.gauss(0.0, s.seed_sd) for mu in truth]
    search = [_trial(i, v / 100.0) for i, v in enumerate(noisy)]
    best = max(truth)
    single = select_best(search, METRIC, "max")
    assert single is not None
    candidates: list[Candidate] = plan(search, METRIC, "max", s.top, None)
    fresh = list(range(1, s.seeds + 1))
    for c in candidates:
        i = int(c.config["i"])
        c.runs = [_trial(i, (truth[i] + rng.gauss(0.0, s.seed_sd)) / 100.0, seed, "confirm")
                  for seed in fresh]
    conf = Confirmation(METRIC, "max", fresh, s.top, candidates)
    win = conf.winner
    assert win is not None and win.source is not None
    one_i, conf_i = int(single.config["i"]), int(win.source.config["i"])
    stat = win.stat(METRIC)
    assert stat is not None
    return {"one_seed_hit": float(truth[one_i] == best),
            "confirmed_hit": float(truth[conf_i] == best),
            "one_seed_regret": best - truth[one_i], "confirmed_regret": best - truth[conf_i],
            "one_seed_optimism": noisy[one_i] - truth[one_i],
            "confirmed_optimism": stat.mean * 100.0 - truth[conf_i],
            "search_optimism": (conf.optimism or 0.0) * 100.0}


def simulate(s: Setting) -> dict[str, Any]:
    """Means over ``s.repeats`` repeats (the hit rates as fractions) and their standard errors."""
    rng = random.Random(s.seed)
    rows = [one_repeat(s, rng) for _ in range(s.repeats)]
    out: dict[str, Any] = {"setting": dataclasses.asdict(s)}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        out[key] = statistics.fmean(vals)
        out[f"{key}_se"] = statistics.stdev(vals) / len(vals) ** 0.5
    return out


def report(r: dict[str, Any]) -> str:
    s = r["setting"]
    return (
        f"{s['configs']} configurations (true means 80 − {s['spread']} × U(0,1)), seed sd "
        f"{s['seed_sd']} points, confirmation top {s['top']} × {s['seeds']} fresh seeds, "
        f"{s['repeats']} repeats (seed {s['seed']})\n"
        "| procedure | picks the truly best | true regret (points) | optimism (points) |\n"
        "|---|---|---|---|\n"
        f"| one seed (best trial) | {r['one_seed_hit']:.1%} ± {r['one_seed_hit_se']:.1%} | "
        f"{r['one_seed_regret']:.2f} | {r['one_seed_optimism']:+.2f} |\n"
        f"| confirmed on fresh seeds | {r['confirmed_hit']:.1%} ± {r['confirmed_hit_se']:.1%} | "
        f"{r['confirmed_regret']:.2f} | {r['confirmed_optimism']:+.2f} |\n"
        f"The search's optimism as the sweep prints it (best single-seed value minus that "
        f"configuration's confirmed mean): {r['search_optimism']:+.2f} points on average.\n")


def _nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, found {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    d = Setting()
    p = OneLineParser(prog="python -m sslsearch.bench selection",
                description="Simulate one-seed selection against confirmation on fresh seeds.")
    p.add_argument("--configs", type=positive_int, default=d.configs)
    p.add_argument("--spread", type=_nonneg, default=d.spread)
    p.add_argument("--seed-sd", type=_nonneg, default=d.seed_sd)
    p.add_argument("--top", type=positive_int, default=d.top)
    p.add_argument("--seeds", type=positive_int, default=d.seeds)
    p.add_argument("--repeats", type=positive_int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    def run() -> int:
        a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
        if a.top > a.configs:
            raise ConfigError(f"--top {a.top}: more than --configs {a.configs}")
        r = simulate(Setting(a.configs, a.spread, a.seed_sd, a.top, a.seeds, a.repeats, a.seed))
        print(json.dumps(r, indent=2) if a.json else report(r))
        return 0

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
