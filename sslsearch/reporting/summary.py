"""The sweep's summary (``summary.md``, the terminal, the sweep's MLflow run): every trial ranked,
each accuracy beside its baselines, and whether the label-free metrics rank trials as the labels
do (Spearman's ρ, per method). Reads results through :mod:`sslsearch.results`; no torch."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from sslsearch.config import LABEL_FREE_OBJECTIVES
from sslsearch.reporting.confirm_report import markdown
from sslsearch.results import (
    INIT_KEY,
    SELECTION,
    baseline_line,
    baselines_of,
    budget,
    budget_line,
    delta_points,
    fmt,
    fmt_delta,
    number,
    rank_key,
    record,
    result_checkpoint,
    result_status,
)


def summarize(results: Any, metric: str, mode: str, confirmation: Any = None
              ) -> tuple[str, list[dict[str, Any]]]:
    """A Markdown table: the best trial of each method, and all trials ranked by the one
    selection rule (:func:`sslsearch.results.rank_trials`), each accuracy beside its difference
    to the raw-pixel baseline (and val kNN to the random-init encoder); above it the baselines,
    the budget (:func:`budget_line`) and, when the search was confirmed on fresh seeds
    (``confirmation``, a :class:`sslsearch.search.confirm.Confirmation`), its candidates first."""
    results = list(results)
    rows = []
    for r in results:
        m = r.metrics or {}
        if metric not in m:
            continue
        cfg = r.config or {}
        params = {k: v for k, v in cfg.items()
                  if not k.startswith("_") and k != "method"}
        rec = record(r, "search")
        rows.append({"trial_id": rec.trial_id, "method": rec.method, "params": params,
                     "epochs": int(m.get("epoch", 0)), metric: m.get(metric),
                     "val_knn_acc": m.get("val_knn_acc"),
                     "probe_val_acc": m.get("probe_val_acc"),
                     "probe_test_acc": m.get("probe_test_acc"),
                     "baselines": baselines_of(m),
                     "status": result_status(r), "metrics": m,
                     "config": cfg, "path": r.path, "checkpoint": result_checkpoint(r),
                     "record": rec})
    rows.sort(key=lambda row: rank_key(row["record"], metric, mode))
    ranked_by = "val kNN" if metric == "val_knn_acc" else metric
    lines = [f"| method | trial | epochs | status | {ranked_by} | vs raw pixels | vs random init | "
             "probe val | vs raw pixels | probe test | vs raw pixels | parameters |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best_per_method: dict[str, dict[str, Any]] = {}
    for row in rows:
        best_per_method.setdefault(row["method"], row)

    def vs(row: dict[str, Any], acc: str, base: str) -> str:
        if row[acc] is None:  # no probe (stopped early, probe: false): nothing to compare
            return ""
        return fmt_delta(delta_points(row[acc], row["baselines"].get(base)))

    def cell(value: Any) -> str:  # no probe (stopped early, probe: false): empty, not "None"
        return "" if value is None else fmt(value)

    def line(row: dict[str, Any]) -> str:
        params = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(row["params"].items()))
        return (f"| {row['method']} | {row['trial_id']} | {row['epochs']} | {row['status']} | "
                f"{cell(row[metric])} | {vs(row, 'val_knn_acc', 'raw_knn_acc')} | "
                f"{vs(row, 'val_knn_acc', INIT_KEY)} | {cell(row['probe_val_acc'])} | "
                f"{vs(row, 'probe_val_acc', 'raw_probe_acc')} | {cell(row['probe_test_acc'])} | "
                f"{vs(row, 'probe_test_acc', 'raw_probe_test_acc')} | {params} |")

    labeled = any(r["val_knn_acc"] is not None for r in rows) or not rows
    confirmed = [] if confirmation is None else [markdown(confirmation)]
    text = [f"Trials ranked by `{metric}` ({mode}imised), in ASHA and TPE alike: {SELECTION}\n",
            baseline_line(rows) if labeled else "**Baselines**: none (no labels: the trials are "
            "judged by label-free metrics only).\n", budget_line(budget(results)), *confirmed,
            "## Best trial per method (selected on validation)", "", *lines,
            *(line(r) for r in best_per_method.values()), "", "## All trials", "", *lines,
            *(line(r) for r in rows)]
    correlations = correlation_markdown([(r["method"], r["metrics"]) for r in rows])
    return "\n".join(text) + "\n" + (f"\n{correlations}" if correlations else ""), rows


# ------------------------------------------------------------------------------------------------
# Label-free metrics against the labels: do they rank trials as the labels would?

# Below this many trials a rank correlation is printed as "too few trials": with 3 or 4 pairs
# |ρ| = 1 happens by chance alone one time in 3 or in 12.
MIN_RANK_PAIRS = 5
LABELED_KEYS = {"val_knn_acc": "val kNN", "probe_val_acc": "probe val",
                "probe_data_val_acc": "probe_data_dir val"}


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[float | None, int]:
    """Spearman's ρ (the Pearson correlation of the ranks, ties averaged) over the pairs where
    both are finite numbers, and how many pairs that was; ρ is None below 3 pairs or when either
    side is constant."""
    pairs = [(a, b) for a, b in zip(xs, ys, strict=True)
             if number(a) is not None and number(b) is not None]
    if len(pairs) < 3:
        return None, len(pairs)
    rx, ry = _ranks([float(a) for a, _ in pairs]), _ranks([float(b) for _, b in pairs])
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None, len(pairs)
    return sxy / math.sqrt(sxx * syy), len(pairs)


def label_free_correlations(trials: Sequence[tuple[str, Mapping[str, Any]]]
                            ) -> list[dict[str, Any]]:
    """For each method (and across methods when there are several), Spearman's ρ of each
    label-free metric with each labeled one over the trials' last results: one row per group,
    ``{"group", "n", "<label-free> vs <labeled>": (ρ, n) ...}``. The papers compare rank-type
    metrics within one method only (whitening losses inflate rank): the across-methods row is
    indicative."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for method, metrics in trials:
        groups.setdefault(method, []).append(metrics)
    if len(groups) > 1:
        groups["all methods"] = [m for _, m in trials]
    rows = []
    for group, members in groups.items():
        row: dict[str, Any] = {"group": group, "n": len(members)}
        for free in LABEL_FREE_OBJECTIVES:
            for labeled in LABELED_KEYS:
                row[f"{free} vs {labeled}"] = spearman([m.get(free) for m in members],
                                                       [m.get(labeled) for m in members])
        rows.append(row)
    return rows


def correlation_markdown(trials: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The summary's section on the label-free metrics: ρ per method, "" when the trials carry
    no label-free metric or no labeled one."""
    if not any(k in m for _, m in trials for k in LABEL_FREE_OBJECTIVES) or not any(
            k in m for _, m in trials for k in LABELED_KEYS):
        return ""
    cols = [(free, labeled) for free in LABEL_FREE_OBJECTIVES for labeled in LABELED_KEYS
            if any(labeled in m for _, m in trials)]
    head = " | ".join(f"{f} vs {LABELED_KEYS[lab]}" for f, lab in cols)
    lines = ["## Label-free metrics against the labels", "",
             "Spearman's ρ across trials (last result of each; pairs counted in brackets; "
             f"fewer than {MIN_RANK_PAIRS}: too few trials): does "
             "the metric rank trials as the labels do? Within one method is what the papers "
             "claim; across methods is indicative only (whitening losses inflate rank).", "",
             f"| trials of | trials | {head} |", "|---|---|" + "---|" * len(cols)]
    for row in label_free_correlations(trials):
        cells = []
        for free, labeled in cols:
            rho, n = row[f"{free} vs {labeled}"]
            cells.append(f"too few trials ({n})" if n < MIN_RANK_PAIRS
                         else "n/a" if rho is None else f"{rho:+.2f} ({n})")
        lines.append(f"| {row['group']} | {row['n']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
