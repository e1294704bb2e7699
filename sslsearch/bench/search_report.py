"""The search benchmark's report (:mod:`sslsearch.bench.search`): the summary per strategy over
its search seeds, ``bench_search.md``, ``bench_search.json`` and ``best_so_far.png`` (matplotlib,
Agg backend: no display needed); and what it keeps of the trials besides (no checkpoints)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_JSON = "bench_search.json"
RESULTS_MD = "bench_search.md"
CURVE_PNG = "best_so_far.png"


def mean_curve(curves: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Pointwise mean of best-so-far curves (a curve shorter than another keeps its last
    value); None until every search seed has a finished trial."""
    out: list[float | None] = []
    for x in range(max((len(c) for c in curves), default=0)):
        vals = [v for c in curves if c and (v := c[min(x, len(c) - 1)]) is not None]
        out.append(sum(vals) / len(vals) if vals and len(vals) == len(curves) else None)
    return out


def _stat(values: Sequence[Any]) -> dict[str, Any]:
    from sslsearch.results import mean_std

    vals = [float(v) for v in values if isinstance(v, int | float)]
    mean, std = mean_std(vals)
    return {"mean": mean, "std": std, "n": len(vals)}


def aggregate(runs: Sequence[dict[str, Any]], strategies: Sequence[str]
              ) -> list[dict[str, Any]]:
    """Per budget and strategy, over the search seeds: mean ± std of the best val kNN at the
    search's seed and of that trial's probe test accuracy, of the confirmed winner's mean, of the
    regret and of the optimism; the budget spent and the wall time."""
    out = []
    for budget in sorted({r.get("budget_trials", 0) for r in runs}):
        for strategy in strategies:
            mine = [r for r in runs if r["strategy"] == strategy
                    and r.get("budget_trials", 0) == budget]
            if not mine:
                continue
            bests = [r["best"] for r in mine]
            confirmed = [r.get("confirmed") or {} for r in mine]
            out.append({
                "strategy": strategy, "budget_trials": budget,
                "best_val_knn_acc": _stat([b["val_knn_acc"] for b in bests if b]),
                "best_probe_test_acc": _stat([b["probe_test_acc"] for b in bests if b]),
                "confirmed": _stat([(c.get("stat") or {}).get("mean") for c in confirmed]),
                "regret": _stat([c.get("regret") for c in confirmed]),
                "optimism": _stat([c.get("optimism") for c in confirmed]),
                "spent": [r["spent"] for r in mine],
                "within_budget": all(r["within_budget"] for r in mine),
                "trials": {k: sum(r["budget"][k] for r in mine)
                           for k in ("trials", "finished", "stopped_early", "failed")},
                "wall_s": _stat([r["wall_s"] for r in mine]),
                "seeds": [r["search_seed"] for r in mine]})
    return out


def _pm(stat: dict[str, Any] | None) -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    return f"{stat['mean'] * 100:.2f} ± {stat['std'] * 100:.2f}"


def pct(v: Any) -> str:
    return f"{v * 100:.2f}" if isinstance(v, int | float) else "n/a"


def _points(v: Any) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{v * 100:+.2f}".replace("-", "−")


def table_markdown(summary: Sequence[dict[str, Any]], n_seeds: int,
                   headroom: float | None = None) -> str:
    """One row per budget and strategy (accuracies in %, differences in points)."""
    lines = [f"| budget (trials) | strategy | best val kNN at the search seed (mean ± std, "
             f"{n_seeds} search seeds) | confirmed winner (fresh seeds) | regret | regret / "
             "headroom | optimism | best trial's probe test acc | trial-epochs spent (per "
             "search seed) | trials: finished/stopped/failed | wall s (mean) |",
             "|---" * 11 + "|"]
    for s in summary:
        t, regret = s["trials"], s["regret"]["mean"]
        share = ("n/a" if regret is None or not headroom else f"{regret / headroom:.0%}")
        spent = ", ".join(map(str, s["spent"])) + ("" if s["within_budget"] else " (off budget)")
        wall = s["wall_s"]["mean"]
        lines.append(f"| {s['budget_trials']} | {s['strategy']} | {_pm(s['best_val_knn_acc'])} "
                     f"| {_pm(s['confirmed'])} | {_points(regret)} | {share} | "
                     f"{_points(s['optimism']['mean'])} | {_pm(s['best_probe_test_acc'])} | "
                     f"{spent} | {t['finished']}/{t['stopped_early']}/{t['failed']} | "
                     f"{'n/a' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(lines) + "\n"


def runs_markdown(runs: Sequence[dict[str, Any]]) -> str:
    lines = ["| budget | strategy | search seed | best val kNN | probe test | best trial | "
             "confirmed winner | its mean | regret | trial-epochs | "
             "trials: finished/stopped/failed | wall s | best trial's parameters |",
             "|---" * 13 + "|"]
    for r in runs:
        b, bud, c = r["best"], r["budget"], r.get("confirmed") or {}
        params = "" if b is None else ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(b["params"].items()))
        lines.append(f"| {r.get('budget_trials', 'n/a')} | {r['strategy']} | "
                     f"{r['search_seed']} | {pct(None if b is None else b['val_knn_acc'])} | "
                     f"{pct(None if b is None else b['probe_test_acc'])} | "
                     f"{'none' if b is None else b['trial_id']} | {c.get('winner') or 'none'} | "
                     f"{pct((c.get('stat') or {}).get('mean'))} | {_points(c.get('regret'))} | "
                     f"{r['spent']} | {bud['finished']}/{bud['stopped_early']}/{bud['failed']} "
                     f"| {r['wall_s']:.0f} | {params} |")
    return "\n".join(lines) + "\n"


def _strategies_text(info: dict[str, Any]) -> str:
    text = {"default": "**default**: the experiment's trial settings and the space's constants, "
                       "no searched parameter, as many seeds per search seed as the budget has "
                       "trials (its answer: the default configuration)",
            "random": "**random**: the space's initial points, then Optuna's RandomSampler(search "
                      "seed), every trial to its last epoch (ASHA stops none)",
            "tpe_asha": "**tpe_asha**: the product's search (seeded TPE, ASHA, collapse "
                        "stopper); trials running when the budget is reached are stopped"}
    return "; ".join(text[s] for s in info["strategies"])


def headroom_markdown(info: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """The reference search, the default configuration's confirmed mean and the headroom."""
    seeds = ", ".join(map(str, info["fresh_seeds"]))
    default = info["defaults"]["stat"]
    lines = [f"## How much was there to find? (confirmed on fresh seeds {seeds})", "",
             f"Default configuration: {_pm(_sd(default))} val kNN over the fresh seeds."]
    if ref is None:
        return "\n".join([*lines, "No reference search (--reference-trials 0): no headroom, no "
                           "regret.", ""]) + "\n"
    head = ref["headroom"]
    lines += [f"Reference: a random search of {ref['trials']} trials ({ref['finished']} finished, "
              f"best single-seed val kNN {pct(ref['best_single_seed'])}), its top "
              f"{len(ref['candidates'])} confirmed:", "",
              "| configuration | confirmed val kNN (mean ± sd) | 95 % interval | parameters |",
              "|---|---|---|---|"]
    for c in ref["candidates"]:
        st = c["stat"]
        interval = ("n/a" if not st or st["low"] is None else
                    f"[{st['low'] * 100:.2f}, {st['high'] * 100:.2f}]")
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(c["params"].items()))
        lines.append(f"| {c['name']} | {_pm(_sd(st))} | {interval} | {params} |")
    best = ref["best"]
    lines += ["", f"**Best the space holds** (as far as the reference tells): {best['name']}, "
              f"{_pm(_sd(best['stat']))}. **Headroom** over the default configuration: "
              f"{_points(head and head['mean'])} points"
              + ("" if not head or head["low"] is None else
                 f" (95 % paired interval {_points(head['low'])} to {_points(head['high'])})")
              + ". *Regret*: that best minus a strategy's confirmed winner (negative: the "
              "strategy found better than the reference).", ""]
    return "\n".join(lines) + "\n"


def _sd(stat: dict[str, Any] | None) -> dict[str, Any] | None:
    """A confirm.Stat as a dict, in aggregate's keys (``std`` for the sd)."""
    return None if not stat else {"mean": stat["mean"], "std": stat["sd"]}


def report_markdown(info: dict[str, Any], summary: Sequence[dict[str, Any]],
                    runs: Sequence[dict[str, Any]], ref: dict[str, Any] | None = None) -> str:
    n = len(info["search_seeds"])
    budgets = ", ".join(f"{b['trials']} trials ({b['trial_epochs']} trial-epochs)"
                        for b in info["budgets"])
    head = ((ref or {}).get("headroom") or {}).get("mean")
    return (
        f"# Does the search beat defaults? {info['name']}\n\n"
        f"Command: `{info['command']}`\n\n"
        f"Space `{info['space']}` (method {info['method']}), experiment `{info['experiment']}` "
        f"(dataset {info['dataset']}, backbone {info['backbone']}, {info['epochs']} epochs a "
        f"trial). Budgets per strategy and search seed: {budgets}; search seeds "
        f"{', '.join(map(str, info['search_seeds']))}.\n\n"
        f"Strategies: {_strategies_text(info)}.\n\n"
        f"Selection: {info['selection']} Each run's top {info['confirm_top']} are confirmed on "
        f"the fresh seeds {', '.join(map(str, info['fresh_seeds']))} "
        f"({info['confirmation_runs']} confirmation runs trained, each configuration once).\n\n"
        f"{headroom_markdown(info, ref)}\n"
        f"{table_markdown(summary, n, head)}\n"
        f"Accuracies in %, mean ± sample std (ddof 1) over {n} search seeds; differences in "
        "points. *Confirmed winner*: the run's answer re-run on the fresh seeds, its mean; "
        "*optimism*: the run's best single-seed value minus that configuration's confirmed mean. "
        "Trial-epochs: pretraining epochs actually trained (ASHA-stopped trials count the epochs "
        "they ran); every strategy must spend the budget ± one trial's epochs "
        f"({info['epochs']}). Wall s: one run, Ray start-up of its trials included. Total wall "
        f"time {info['wall_seconds']:.0f} s.\n\n"
        f"![best so far]({CURVE_PNG})\n\n"
        f"## Per run\n\n{runs_markdown(runs)}")


def plot_best_so_far(runs: Sequence[dict[str, Any]], strategies: Sequence[str], budget: int,
                     path: Path) -> Path:
    """Best finished val kNN against cumulative trial-epochs: a thin line per search seed, a
    thick one for the mean, one colour per strategy; the budget as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslsearch.reporting.report import style_curve_axes

    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, strategy in enumerate(strategies):
        curves = [r["curve"] for r in runs if r["strategy"] == strategy]
        for curve in curves:
            xs = [x + 1 for x, v in enumerate(curve) if v is not None]
            ax.step(xs, [v for v in curve if v is not None], where="post", color=cmap(i),
                    lw=0.8, alpha=0.45)
        mean = mean_curve(curves)
        xs = [x + 1 for x, v in enumerate(mean) if v is not None]
        ax.step(xs, [v for v in mean if v is not None], where="post", color=cmap(i), lw=2.2,
                label=f"{strategy} (mean of {len(curves)})")
    ax.axvline(budget, color="black", ls=":", lw=1, label=f"budget ({budget})")
    ax.set_xlim(left=0)
    style_curve_axes(ax, "cumulative trial-epochs", "best finished trial's val kNN accuracy",
                     "Best so far at equal budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(folder: Path, info: dict[str, Any], runs: Sequence[dict[str, Any]],
                  ref: dict[str, Any] | None = None) -> tuple[str, list[Path]]:
    """``bench_search.md``, ``bench_search.json`` (``info``, the summary, the reference, every run
    with its trials and curve) and ``best_so_far.png`` (the largest budget) into ``folder``."""
    summary = aggregate(runs, info["strategies"])
    md = report_markdown(info, summary, runs, ref)
    (folder / RESULTS_MD).write_text(md)
    doc = {**info, "summary": summary, "reference": ref, "runs": list(runs)}
    (folder / RESULTS_JSON).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    largest = max((b["trial_epochs"] for b in info["budgets"]), default=0)
    png = plot_best_so_far([r for r in runs if r.get("budget_epochs", largest) == largest],
                           info["strategies"], largest, folder / CURVE_PNG)
    return md, [folder / RESULTS_MD, folder / RESULTS_JSON, png]


def drop_checkpoints(folder: Path) -> int:
    """Delete the trial checkpoints under ``folder`` (its strategy's results are read by then);
    the bytes freed. A 12-trial × 3-search-seed Fashion-MNIST benchmark kept 31 GB of them."""
    freed = 0
    for checkpoint in [d for d in folder.rglob("checkpoint_*") if d.is_dir()]:
        freed += sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        shutil.rmtree(checkpoint, ignore_errors=True)
    return freed
