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


def aggregate(runs: Sequence[dict[str, Any]], strategies: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
    """Per strategy, over its search seeds: mean ± std of the best val kNN and of the best
    trial's probe test accuracy, the budget spent and the wall time."""
    from sslsearch.results import mean_std

    out: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        mine = [r for r in runs if r["strategy"] == strategy]

        def stat(values: Sequence[Any]) -> dict[str, Any]:
            vals = [float(v) for v in values if isinstance(v, int | float)]
            mean, std = mean_std(vals)
            return {"mean": mean, "std": std, "n": len(vals)}

        bests = [r["best"] for r in mine]
        out[strategy] = {
            "best_val_knn_acc": stat([b["val_knn_acc"] for b in bests if b]),
            "best_probe_test_acc": stat([b["probe_test_acc"] for b in bests if b]),
            "spent": [r["spent"] for r in mine],
            "within_budget": all(r["within_budget"] for r in mine),
            "trials": {k: sum(r["budget"][k] for r in mine)
                       for k in ("trials", "finished", "stopped_early", "failed")},
            "wall_s": stat([r["wall_s"] for r in mine]),
            "seeds": [r["search_seed"] for r in mine]}
    return out


def _pm(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean'] * 100:.2f} ± {stat['std'] * 100:.2f}"


def pct(v: Any) -> str:
    return f"{v * 100:.2f}" if isinstance(v, int | float) else "n/a"


def table_markdown(summary: dict[str, dict[str, Any]], n_seeds: int) -> str:
    """One row per strategy (accuracies in %)."""
    base = summary.get("default", {}).get("best_val_knn_acc", {}).get("mean")
    lines = [f"| strategy | best val kNN (mean ± std, {n_seeds} search seeds) | vs default "
             "(points) | best trial's probe test acc | trial-epochs spent (per search seed) | "
             "trials: finished/stopped/failed (all seeds) | wall s (mean) |", "|---" * 7 + "|"]
    for strategy, s in summary.items():
        mean = s["best_val_knn_acc"]["mean"]
        vs = ("n/a" if mean is None or base is None else
              f"{(mean - base) * 100:+.2f}".replace("-", "−"))
        t = s["trials"]
        spent = ", ".join(map(str, s["spent"])) + ("" if s["within_budget"] else " (off budget)")
        wall = s["wall_s"]["mean"]
        lines.append(f"| {strategy} | {_pm(s['best_val_knn_acc'])} | {vs} | "
                     f"{_pm(s['best_probe_test_acc'])} | {spent} | {t['finished']}/"
                     f"{t['stopped_early']}/{t['failed']} | "
                     f"{'n/a' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(lines) + "\n"


def runs_markdown(runs: Sequence[dict[str, Any]]) -> str:
    lines = ["| strategy | search seed | best val kNN | probe test | best trial | trial-epochs | "
             "trials: finished/stopped/failed | wall s | best trial's parameters |",
             "|---" * 9 + "|"]
    for r in runs:
        b, bud = r["best"], r["budget"]
        params = "" if b is None else ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(b["params"].items()))
        lines.append(f"| {r['strategy']} | {r['search_seed']} | "
                     f"{pct(None if b is None else b['val_knn_acc'])} | "
                     f"{pct(None if b is None else b['probe_test_acc'])} | "
                     f"{'none' if b is None else b['trial_id']} | {r['spent']} | "
                     f"{bud['finished']}/{bud['stopped_early']}/{bud['failed']} | "
                     f"{r['wall_s']:.0f} | {params} |")
    return "\n".join(lines) + "\n"


def _strategies_text(info: dict[str, Any]) -> str:
    text = {"default": "**default**: the experiment's trial settings and the space's constants, "
                       f"no searched parameter, {info['default_seeds']} seeds per search seed",
            "random": "**random**: the space's initial points, then Optuna's RandomSampler(search "
                      "seed), every trial to its last epoch (ASHA stops none)",
            "tpe_asha": "**tpe_asha**: the product's search (seeded TPE, ASHA, collapse "
                        "stopper); trials running when the budget is reached are stopped"}
    return "; ".join(text[s] for s in info["strategies"])


def report_markdown(info: dict[str, Any], summary: dict[str, dict[str, Any]],
                    runs: Sequence[dict[str, Any]]) -> str:
    n = len(info["search_seeds"])
    return (
        f"# Does the search beat defaults? {info['name']}\n\n"
        f"Command: `{info['command']}`\n\n"
        f"Space `{info['space']}` (method {info['method']}), experiment `{info['experiment']}` "
        f"(dataset {info['dataset']}, backbone {info['backbone']}, {info['epochs']} epochs a "
        f"trial). Budget: **{info['budget']} trial-epochs** per strategy and search seed "
        f"(default: {info['budget_trials']} trials × {info['epochs']} epochs; random and "
        f"tpe_asha: until their trained epochs reach the budget, at most {info['tpe_cap']} "
        f"trials); search seeds "
        f"{', '.join(map(str, info['search_seeds']))}.\n\n"
        f"Strategies: {_strategies_text(info)}.\n\n"
        f"Selection: {info['selection']}.\n\n"
        f"{table_markdown(summary, n)}\n"
        f"Accuracies in %, mean ± sample std (ddof 1) over {n} search seeds; *vs default*: "
        "difference of the means. Trial-epochs: pretraining epochs actually trained (ASHA-stopped "
        "trials count the epochs they ran); every strategy must spend the budget ± one trial's "
        f"epochs ({info['epochs']}). Wall s: one strategy × search seed, Ray start-up of its "
        f"trials included. Total wall time {info['wall_seconds']:.0f} s.\n\n"
        f"![best so far]({CURVE_PNG})\n\n"
        f"## Per search seed\n\n{runs_markdown(runs)}")


def plot_best_so_far(runs: Sequence[dict[str, Any]], strategies: Sequence[str], budget: int,
                     path: Path) -> Path:
    """Best finished val kNN against cumulative trial-epochs: a thin line per search seed, a
    thick one for the mean, one colour per strategy; the budget as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslsearch.report import style_curve_axes

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


def write_results(folder: Path, info: dict[str, Any], runs: Sequence[dict[str, Any]]
                  ) -> tuple[str, list[Path]]:
    """``bench_search.md``, ``bench_search.json`` (``info``, the summary per strategy, every
    run with its trials and curve) and ``best_so_far.png`` into ``folder``."""
    summary = aggregate(runs, info["strategies"])
    md = report_markdown(info, summary, runs)
    (folder / RESULTS_MD).write_text(md)
    doc = {**info, "summary": summary, "runs": list(runs)}
    (folder / RESULTS_JSON).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    png = plot_best_so_far(runs, info["strategies"], info["budget"], folder / CURVE_PNG)
    return md, [folder / RESULTS_MD, folder / RESULTS_JSON, png]


def drop_checkpoints(folder: Path) -> int:
    """Delete the trial checkpoints under ``folder`` (its strategy's results are read by then);
    the bytes freed. A 12-trial × 3-search-seed Fashion-MNIST benchmark kept 31 GB of them."""
    freed = 0
    for checkpoint in [d for d in folder.rglob("checkpoint_*") if d.is_dir()]:
        freed += sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        shutil.rmtree(checkpoint, ignore_errors=True)
    return freed
