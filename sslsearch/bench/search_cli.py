"""``python -m sslsearch.bench search``'s flags: what each means and its default, in words
(the benchmark itself: :mod:`sslsearch.bench.search`)."""

from __future__ import annotations

import argparse

from sslsearch.bench.strategies import STRATEGIES
from sslsearch.cli import positive_int
from sslsearch.errors import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sslsearch.bench search",
                description="Equal trial-epoch budgets: the default config, random search and "
                            "TPE + ASHA, over several search seeds.")
    p.add_argument("--space", required=True,
                   help="search-space YAML: a path or a name under search_spaces/")
    p.add_argument("--experiment", default="quick",
                   help="experiment YAML: a path or a name under experiments/ "
                        "(default: %(default)s)")
    p.add_argument("--method", help="the method, for a space that draws several "
                                    "(all_methods.yaml)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=positive_ints,
                        help="trial-epochs per strategy and search seed; several, comma-"
                             "separated, for several budgets (default: --budget-trials × epochs)")
    budget.add_argument("--budget-trials", type=positive_ints,
                        help="the budget in whole trials (budget = this × epochs), e.g. 8,16,32 "
                             "(default: the experiment's search.num_samples)")
    p.add_argument("--epochs", type=positive_int,
                   help="pretraining epochs per trial (default: the experiment's)")
    p.add_argument("--search-seeds", type=positive_int, default=3,
                   help="repetitions of each strategy (seeds 0 … N−1; default: %(default)s); "
                        "a claim wants ≥ 3")
    p.add_argument("--seeds", type=positive_int,
                   help="runs of the experiment's own configuration per search seed, one budget "
                        "only (default: budget // epochs; must spend the budget ± one trial)")
    p.add_argument("--reference-trials", type=nonneg_int, default=0,
                   help="the reference: a random search of this many trials, its top "
                        "--reference-top confirmed on the fresh seeds, against which headroom "
                        "and regret are measured (default: 0, none)")
    p.add_argument("--reference-top", type=positive_int, default=5,
                   help="configurations of the reference confirmed (default: %(default)s)")
    p.add_argument("--confirm-top", type=positive_int, default=2,
                   help="each run's top K confirmed on the fresh seeds, as a sweep confirms "
                        "its own (default: %(default)s)")
    p.add_argument("--confirm-seeds", type=positive_int, default=3,
                   help="fresh seeds of every confirmation (default: %(default)s)")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated subset of: " + ", ".join(STRATEGIES) + " (default: all)")
    p.add_argument("--max-concurrent", type=positive_int,
                   help="trials at once (default: the experiment's)")
    p.add_argument("--grace-period", type=positive_int,
                   help="tpe_asha: epochs before ASHA may stop a trial (default: the "
                        "experiment's)")
    p.add_argument("--name", help="benchmark name, a folder under --storage "
                                  "(default: bench-search-<space>-<time>-<random>)")
    p.add_argument("--storage", default="sslsearch_results",
                   help="local folder for the results and the Ray experiments "
                        "(default: %(default)s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/"
                                          "mlflow.db)")
    p.add_argument("--mlflow-experiment", default="sslsearch",
                   help="MLflow experiment the benchmark's runs go to (default: %(default)s)")
    p.add_argument("--data-dir", help="dataset folder, overriding the experiment's")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the trials' checkpoints (default: deleted once each strategy's "
                        "results are read; the benchmark never uses them)")
    return p


def positive_ints(text: str) -> tuple[int, ...]:
    """``8,16,32``: whole numbers ≥ 1, distinct, ascending in the result."""
    values = tuple(positive_int(t) for t in text.split(","))
    return tuple(sorted(set(values)))


def nonneg_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)
