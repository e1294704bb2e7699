"""The method comparison's tables (:mod:`sslsearch.compare` runs it): one row per method over its
confirmed winner's fresh-seed runs, each accuracy beside its raw-pixel and random-init baselines,
and the ranking with paired tests over the seeds (the same seeds for every method)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslsearch.config import LABEL_FREE_OBJECTIVES
from sslsearch.methods import uses_labels
from sslsearch.reporting.summary import MIN_RANK_PAIRS, spearman
from sslsearch.results import (
    BASELINE_KEYS,
    INIT_KEY,
    RAW_VS,
    SELECTION,
    TrialRecord,
    delta_points,
    fmt_delta,
    mean_std,
    number,
)
from sslsearch.search.confirm import fmt_interval, fmt_stat, paired, scale, stat


def method_rows(search: dict[str, list[TrialRecord]], seeds: dict[str, list[TrialRecord]],
              best: dict[str, TrialRecord | None], metric: str = "val_knn_acc",
              mode: str = "max") -> list[dict[str, Any]]:
    """One row per method (``seeds``: its winner's runs on the fresh seeds), ordered by the mean
    of the search's metric over those runs, the confirmed value the winner was chosen on (best
    first; validation only, never test)."""
    rows = []
    for method, trials in search.items():
        runs = [t for t in seeds.get(method, []) if t.status == "finished"]
        row: dict[str, Any] = {"method": method,
                               "supervised": bool(runs and uses_labels(runs[0].config))}
        for key in dict.fromkeys(("probe_test_acc", "test_knn_acc", "val_knn_acc",
                                  "probe_val_acc", metric, *BASELINE_KEYS,
                                  *LABEL_FREE_OBJECTIVES)):
            mean, std = mean_std([float(t.metrics[key]) for t in runs if key in t.metrics])
            row[key] = {"mean": mean, "std": std, "n": len(runs)}
        # The raw-pixel baseline is one value per split: carried from any trial of the method
        # when no seed run finished (the random-init kNN is per trial: seed runs only).
        for key in RAW_VS.values():
            if row[key]["mean"] is None:
                carried = [float(t.metrics[key]) for t in [*seeds.get(method, []), *trials]
                           if key in t.metrics]
                mean, std = mean_std(carried)
                row[key] = {"mean": mean, "std": std, "n": len(carried)}
        # Seed → value of the metric: what the ranking's paired tests compare (the same fresh
        # seeds for every method).
        row["values"] = {int(t.seed): float(t.metrics[metric]) for t in runs
                         if t.seed is not None and number(t.metrics.get(metric)) is not None}
        # Differences of the means (fractions; the table shows points): what pretraining added.
        row["vs_raw"] = {acc: _diff(row[acc], row[raw]) for acc, raw in RAW_VS.items()}
        row["vs_init"] = {"val_knn_acc": _diff(row["val_knn_acc"], row[INIT_KEY])}
        chosen = best.get(method)
        row["selected"] = None if chosen is None else {
            "trial_id": chosen.trial_id, "metric": metric, "value": chosen.metrics.get(metric),
            "probe_val_acc": chosen.probe_val_acc, "params": chosen.params}
        row["search"] = {
            "trials": len(trials),
            "finished": sum(t.status == "finished" for t in trials),
            "stopped_early": sum(t.status == "stopped early" for t in trials),
            "failed": sum(t.status.startswith(("failed", "error")) for t in trials),
            "epochs": int(sum(len(t.epochs) for t in trials)),
            "trial_seconds": sum(t.seconds for t in trials)}
        seed_runs = seeds.get(method, [])
        row["seeds"] = {"runs": len(seed_runs), "finished": len(runs),
                        "seeds": [t.seed for t in seed_runs],
                        "epochs": int(sum(len(t.epochs) for t in seed_runs)),
                        "trial_seconds": sum(t.seconds for t in seed_runs)}
        rows.append(row)
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r[metric]["mean"] is None, sign * (r[metric]["mean"] or 0.0)))
    return rows


def _diff(stat: dict[str, Any], base: dict[str, Any]) -> float | None:
    points = delta_points(stat["mean"], base["mean"])
    return None if points is None else points / 100.0


def _pm(stat: dict[str, Any], scale: float = 100.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}"


def _one(stat: dict[str, Any], scale: float = 100.0) -> str:
    """A baseline: its value, or mean ± std where the runs disagree (a searched k or T)."""
    if stat["mean"] is None:
        return "n/a"
    if not stat["std"]:
        return f"{stat['mean'] * scale:.2f}"
    return _pm(stat, scale)


def _vs(diff: float | None) -> str:
    return fmt_delta(None if diff is None else diff * 100.0, digits=2)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _selected_by(sel: dict[str, Any]) -> str:
    """The search's value of the selected trial (a row's ``selected``), at the search's seed."""
    return f"search {sel['metric']} {_short(sel['value'])}"


def table_markdown(rows: Sequence[dict[str, Any]], n_seeds: int) -> str:
    """The comparison table (accuracies in %), one row per method."""
    lines = [f"| method | linear probe test acc (mean ± std, {n_seeds} seeds) | raw pixels | "
             "vs raw pixels | test kNN acc | raw pixels | vs raw pixels | val kNN acc | "
             "raw pixels | vs raw pixels | random init | vs random init | "
             "selected trial | search: finished/stopped/failed | "
             "search epochs | search trial-s | winner's seed runs trial-s | selected parameters |",
             "|---" * 18 + "|"]
    for r in rows:
        sel = r["selected"]
        chosen = "none" if sel is None else f"{sel['trial_id']} ({_selected_by(sel)})"
        params = "" if sel is None else ", ".join(
            f"{k}={_short(v)}" for k, v in sorted(sel["params"].items()))
        s = r["search"]
        raw, vs = r.get("vs_raw", {}), r.get("vs_init", {})
        missing = {"mean": None}
        lines.append(
            f"| {r['method']}{' (supervised)' if r.get('supervised') else ''} | "
            f"{_pm(r['probe_test_acc'])} | "
            f"{_one(r.get('raw_probe_test_acc', missing))} | "
            f"{_vs(raw.get('probe_test_acc'))} | {_pm(r['test_knn_acc'])} | "
            f"{_one(r.get('raw_test_knn_acc', missing))} | {_vs(raw.get('test_knn_acc'))} | "
            f"{_pm(r['val_knn_acc'])} | {_one(r.get('raw_knn_acc', missing))} | "
            f"{_vs(raw.get('val_knn_acc'))} | {_pm(r.get(INIT_KEY, missing))} | "
            f"{_vs(vs.get('val_knn_acc'))} | {chosen} | {s['finished']}/{s['stopped_early']}/"
            f"{s['failed']} | {s['epochs']} | {s['trial_seconds']:.0f} | "
            f"{r['seeds']['trial_seconds']:.0f} | {params} |")
    return "\n".join(lines) + "\n"


def comparison_markdown(info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    n = info["n_seeds"]
    head = (
        f"# Method comparison {info['name']}\n\n"
        f"Command: `{info['command']}`\n\n"
        f"Space `{info['space']}`, experiment `{info['experiment']}` "
        f"(dataset {info['dataset']}, backbone {info['backbone']}, {info['epochs']} epochs a "
        f"trial). Equal budgets: {info['num_samples']} search trials per method (TPE seed "
        f"{info['search_seed']}; TPE and ASHA rank trials by {info['metric']}), then each method's "
        f"top {info['confirm_top']} configurations and its defaults re-trained with the fresh "
        f"seeds {info['seeds']}, the same for every method.\n\n"
        f"Selection: {SELECTION}\n\n"
        f"{ranking_markdown(rows, info['metric'])}\n")
    if not info.get("labels", True):
        return (head + agreement_note(info["metric"]) + "\nNo labels: no kNN, probe or "
                f"baseline accuracy; the ranking is by {info['metric']} alone.\n"
                f"\nTotal wall time {info['wall_seconds']:.0f} s.\n")
    return (
        head + f"{table_markdown(rows, n)}\n"
        "Accuracies in %, mean ± sample std (ddof 1) over the winner's fresh-seed runs; rows "
        f"ordered by the mean {info['metric']} of those runs (validation, the value each winner "
        "was chosen on). Differences within about one std are not meaningful. "
        "*raw pixels*: the same measure (same linear probe, same kNN k and T) on the "
        "standardised raw pixels of the same split; *random init*: the val kNN accuracy of each "
        "seed run's encoder before its first step; *vs …*: mean accuracy minus the baseline, in "
        "points (positive: pretraining helped). "
        "Compute: trial-seconds = sum of the trials' wall time (Ray's time_total_s: training, "
        "kNN monitoring and probe), epochs = pretraining epochs actually run.\n"
        f"\nTotal wall time {info['wall_seconds']:.0f} s.\n")


def method_agreement(rows: Sequence[dict[str, Any]], labeled: str = "val_knn_acc"
                     ) -> list[dict[str, Any]]:
    """Would a label-free metric have ranked the methods as the labels did? Per metric of
    :data:`LABEL_FREE_OBJECTIVES`: Spearman's ρ between the methods' confirmed means of it and of
    ``labeled`` (each method's winner over the shared fresh seeds), over the methods that have
    both, and the order the metric gives (best first). What :data:`LABEL_FREE_AGREEMENT` quotes."""
    out = []
    for free in LABEL_FREE_OBJECTIVES:
        have = [r for r in rows if r.get(free, {}).get("mean") is not None
                and r.get(labeled, {}).get("mean") is not None]
        rho, n = spearman([r[free]["mean"] for r in have], [r[labeled]["mean"] for r in have])
        order = [r["method"] for r in sorted(have, key=lambda r: -r[free]["mean"])]
        out.append({"metric": free, "labeled": labeled, "rho": rho, "n": n, "order": order})
    return out


def agreement_markdown(agreement: Sequence[dict[str, Any]]) -> str:
    """The comparison's section on ranking methods without labels (``agreement``:
    :func:`method_agreement`'s list); "" when no run carries a label-free metric."""
    found = [a for a in agreement if a["n"]]
    if not found:
        return ""
    lines = ["## Ranking the methods without labels", "",
             "Each method's confirmed winner ranked by a label-free metric of its encoder (mean "
             "over the fresh seeds) instead of by the validation kNN: Spearman's ρ between the "
             f"two orders over the methods (fewer than {MIN_RANK_PAIRS}: too few methods). "
             "Whitening losses (Barlow Twins, VICReg) raise rank by construction, so a high ρ "
             "across methods is evidence for this data, not a law.", "",
             "| label-free metric | ρ with val kNN | methods | its top three |",
             "|---|---|---|---|"]
    for a in found:
        rho = ("too few methods" if a["n"] < MIN_RANK_PAIRS
               else "n/a" if a["rho"] is None else f"{a['rho']:+.2f}")
        lines.append(f"| {a['metric']} | {rho} | {a['n']} | {', '.join(a['order'][:3])} |")
    return "\n".join(lines) + "\n"


# How far a label-free metric's ranking of methods followed the labels' where labels were there:
# Spearman's ρ between the methods' order by the metric and by validation kNN, with what it was
# measured on. The figures and their commands are in docs/comparison.md; printed beside a
# ranking of unlabeled data as evidence, not as a promise.
LABEL_FREE_AGREEMENT: dict[str, tuple[float, str]] = {
    metric: (rho, "Fashion-MNIST, 2,000 training images: 16 methods' defaults confirmed on 3 "
                  "seeds, 2026-12-07")
    for metric, rho in (("rankme", 0.32), ("alpha_req_score", 0.28), ("lidar", -0.26))}


def agreement_note(metric: str) -> str:
    """What is known of how ``metric`` agreed with the labels, in one paragraph."""
    known = LABEL_FREE_AGREEMENT.get(metric)
    if known is None:
        return (f"How far to trust a ranking by `{metric}`: not measured against labels on any "
                "data set yet; run the same comparison on labelled data to see.\n")
    rho, where = known
    return (f"How far to trust a ranking by `{metric}`: where labels were available ({where}), "
            f"it ranked the methods as the validation kNN did at Spearman ρ = {rho:+.2f}: "
            "evidence from other data, not a promise for this one (docs/comparison.md).\n")


def ranking(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (best first) with each method's confirmed statistics and its paired difference
    to the next one down (this minus that, seed by seed): ``indistinguishable`` when that 95 %
    interval holds 0."""
    out = []
    for i, row in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        diff = None if nxt is None else paired(row.get("values", {}), nxt.get("values", {}))
        out.append({"method": row["method"], "stat": stat(row.get("values", {}).values()),
                    "next": None if nxt is None else nxt["method"], "vs_next": diff,
                    "indistinguishable": diff is not None and not diff.excludes_zero})
    return out


def ranking_markdown(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """The ranked list: each method's confirmed mean ± sd and 95 % interval, and whether it can be
    told apart from the next one down (a paired t-interval over the shared fresh seeds)."""
    lines = [f"**Ranking** by the confirmed `{metric}` (mean ± sd over the fresh seeds, 95 % "
             "interval); *vs next*: the paired difference to the method below, seed by seed, "
             "with its 95 % interval; ≈ marks a difference not distinguishable from zero.", ""]
    for i, r in enumerate(ranking(rows), start=1):
        s, d = r["stat"], r["vs_next"]
        vs = "" if r["next"] is None else (
            f"; vs {r['next']}: n/a (no shared seed)" if d is None else
            f"; vs {r['next']}: {fmt_delta(d.mean * scale(metric)[0], 2)} "
            f"{fmt_interval(d, metric, True)}"
            f"{' ≈' if r['indistinguishable'] else ''}")
        lines.append(f"{i}. **{r['method']}** {fmt_stat(s, metric)} "
                     f"{fmt_interval(s, metric)}{vs}")
    return "\n".join(lines) + "\n"
