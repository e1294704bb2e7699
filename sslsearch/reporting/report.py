"""The comparison's report: Markdown + PNG plots (matplotlib, Agg backend: no display needed).

* ``learning_curves.png``: validation kNN accuracy per epoch of each method's selected search
  trial (solid) and of its seed re-runs (dashed), against the raw-pixel kNN (dashed, black) and
  the random-init encoders' kNN (dotted, grey);
* ``param_importance.png``: fANOVA importances per method (Optuna's
  ``FanovaImportanceEvaluator`` over a study rebuilt from the Ray results with
  ``create_study`` + ``add_trial(create_trial(...))``), objective: the search metric's last
  value; needs ≥ 2 completed trials with varying parameters, else the panel says why;
* ``parallel_coordinates.png``: every search trial across method and the shared parameters, each
  axis normalised to [0, 1] (log parameters on a log scale, choices by position), coloured by the
  search metric;
* ``tsne.png``: t-SNE (scikit-learn) of the best encoder's test-split features, coloured by class.

``report.md`` holds the comparison table, the plots and the importances as text.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator

from sslsearch.search.distributions import Dist, label
from sslsearch.search.optuna_space import param_importances
from sslsearch.search.space import SearchSpace

CURVES = "learning_curves.png"
IMPORTANCE = "param_importance.png"
PARALLEL = "parallel_coordinates.png"
TSNE = "tsne.png"
REPORT = "report.md"
MIN_TRIALS = 2
FEW_TRIALS = 8  # below this, importances are reported with a warning


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _note_figure(path: Path, title: str, note: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)]


def learning_curves_figure(trials: Sequence[Any], best: Mapping[str, Any]) -> Any:
    """The learning-curves figure (None when no trial reported an epoch): validation kNN accuracy
    per epoch of each method's selected trial and its seed re-runs, against the raw-pixel kNN
    (dashed, black) and the random-init encoders' kNN (dotted, grey)."""
    methods = list(best)
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn: list[Any] = []
    for method in methods:
        chosen = best[method]
        if chosen is not None and chosen.epochs:
            ax.plot(chosen.epochs, chosen.val_knn, "-o", color=colors[method], lw=2, ms=3,
                    label=f"{method} (search trial {chosen.trial_id})")
            drawn.append(chosen)
        seeds = [t for t in trials if t.method == method and t.stage == "seed" and t.epochs]
        for i, t in enumerate(seeds):
            ax.plot(t.epochs, t.val_knn, "--", color=colors[method], lw=1, alpha=0.7,
                    label=f"{method} seed re-runs" if i == 0 else None)
            drawn.append(t)
    if not drawn:
        plt.close(fig)
        return None
    # The raw-pixel kNN is one value per split (several only when k or T was searched).
    raw = sorted({round(v, 6) for v in _finite([t.metrics.get("raw_knn_acc") for t in drawn])})
    for i, v in enumerate(raw):
        ax.axhline(v, color="black", ls="--", lw=1.2,
                   label=f"raw pixels ({v:.3f})" if i == 0 else None)
    init = _finite([t.metrics.get("init_knn_acc") for t in drawn])
    if init:
        mean = sum(init) / len(init)
        init_label = (f"random init ({mean:.3f})" if max(init) - min(init) < 1e-9 else
                      f"random init (mean of {len(init)}: {mean:.3f})")
        ax.axhline(mean, color="grey", ls=":", lw=1.5, label=init_label)
    style_curve_axes(ax, "epoch", "validation kNN accuracy",
                     "Learning curves of the selected configurations")
    fig.tight_layout()
    return fig


def style_curve_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """The reports' curve plots alike: integer x ticks (epochs), labels, a light grid, the
    legend at the lower right (where rising accuracy curves leave room)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot_learning_curves(trials: Sequence[Any], best: Mapping[str, Any], path: Path,
                         metric: str = "val_knn_acc") -> Path:
    """Validation kNN accuracy per epoch: the selected trial of each method and its seeds, with
    the raw-pixel and random-init baselines (see :func:`learning_curves_figure`)."""
    fig = learning_curves_figure(trials, best)
    if fig is None:
        return _note_figure(path, "Learning curves", "no trial reported an epoch")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------


def method_dists(space: SearchSpace, method: str) -> dict[str, Dist]:
    """The searched (non-constant) parameters of ``method``, keyed as the space names them."""
    return space.dists(method)


def importance(trials: Sequence[Any], space: SearchSpace, method: str
               ) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of ``method``'s searched parameters, or None and the reason."""
    dists = method_dists(space, method)
    usable = [t for t in trials if t.method == method and t.stage == "search"
              and t.val_knn_acc is not None and all(k in t.params for k in dists)]
    if not dists:
        return None, "nothing was searched"
    if len(usable) < MIN_TRIALS:
        return None, f"{len(usable)} completed trial(s); fANOVA needs ≥ {MIN_TRIALS}"
    varying = [k for k in dists if len({repr(label(t.params[k])) for t in usable}) > 1]
    if not varying:
        return None, "no parameter varied across the completed trials"
    if len({t.val_knn_acc for t in usable}) < 2:
        return None, "every completed trial scored the same"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = param_importances([(t.params, float(t.val_knn_acc)) for t in usable],
                                       {k: dists[k] for k in varying})
    except (ValueError, RuntimeError) as exc:  # e.g. a degenerate forest
        return None, f"fANOVA failed: {exc}"
    note = f"{len(usable)} completed trials"
    if len(usable) < FEW_TRIALS:
        note += ": too few to trust"
    return values, note


def plot_importance(results: Mapping[str, tuple[dict[str, float] | None, str]],
                    path: Path) -> Path:
    """One horizontal bar panel per method (or its reason for having none)."""
    methods = list(results)
    if not methods:
        return _note_figure(path, "Parameter importance (fANOVA)", "no methods")
    cols = min(2, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 2.6 * rows), squeeze=False)
    colors = _colors(methods)
    for ax, method in zip(axes.flat, methods, strict=False):
        values, note = results[method]
        ax.set_title(f"{method} ({note})", fontsize=9)
        if not values:
            ax.axis("off")
            ax.text(0.5, 0.5, f"no importances: {note}", ha="center", va="center", fontsize=9,
                    wrap=True, transform=ax.transAxes)
            continue
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color=colors[method])
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("importance (fANOVA, normalised)", fontsize=8)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle("Parameter importance for the search metric (val kNN acc)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------


def _normalise(spec: Dist, value: Any) -> float:
    """``value`` on [0, 1] along ``spec``'s range (log for log scales, position for choices)."""
    if spec.kind == "choice":
        labels = [repr(label(v)) for v in spec.args]
        i = labels.index(repr(label(value))) if repr(label(value)) in labels else 0
        return i / (len(labels) - 1) if len(labels) > 1 else 0.5
    low, high = float(spec.args[0]), float(spec.args[1])
    v = float(value)
    if high == low:
        return 0.5
    if spec.kind in ("loguniform", "logint"):
        return (math.log(v) - math.log(low)) / (math.log(high) - math.log(low))
    return (v - low) / (high - low)


def _ticks(spec: Dist) -> tuple[str, str]:
    if spec.kind == "choice":
        return str(label(spec.args[0])), str(label(spec.args[-1]))
    return f"{spec.args[0]:.3g}", f"{spec.args[1]:.3g}"


def plot_parallel(trials: Sequence[Any], space: SearchSpace, methods: Sequence[str], path: Path,
                  metric: str = "val_knn_acc") -> Path:
    """Parallel coordinates of every completed search trial: method, shared parameters, metric."""
    shared = {k: v for k, v in space.trial.items() if isinstance(v, Dist)}
    usable = [t for t in trials if t.stage == "search" and t.val_knn_acc is not None
              and all(k in t.params for k in shared)]
    if not usable:
        return _note_figure(path, "Parallel coordinates", "no completed search trial")
    method_axis = Dist("choice", tuple(methods))
    axes_specs: list[tuple[str, Dist | None]] = [("method", method_axis),
                                                 *shared.items(), (metric, None)]
    scores = np.array([t.val_knn_acc for t in usable], dtype=float)
    lo, hi = float(scores.min()), float(scores.max())
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(axes_specs)), 4.5))
    xs = np.arange(len(axes_specs))
    order = np.argsort(scores)  # best drawn last, on top
    for i in order:
        t = usable[i]
        ys = []
        for key, spec in axes_specs:
            if spec is None:
                ys.append((t.val_knn_acc - lo) / (hi - lo) if hi > lo else 0.5)
            elif key == "method":
                ys.append(_normalise(spec, t.method))
            else:
                ys.append(_normalise(spec, t.params[key]))
        frac = (scores[i] - lo) / (hi - lo) if hi > lo else 1.0
        ax.plot(xs, ys, "-o", color=cmap(frac), alpha=0.8, lw=1.5, ms=3)
    for x, (key, spec) in zip(range(len(axes_specs)), axes_specs, strict=True):
        ax.axvline(x, color="black", lw=0.8)
        low_t, high_t = (f"{lo:.3f}", f"{hi:.3f}") if spec is None else _ticks(spec)
        if key == "method" and spec is not None:
            for j, m in enumerate(methods):
                ax.text(x + 0.04, j / (len(methods) - 1) if len(methods) > 1 else 0.5, m,
                        fontsize=8, va="center")
        else:
            ax.text(x + 0.04, -0.04, low_t, fontsize=7, va="top")
            ax.text(x + 0.04, 1.04, high_t, fontsize=7, va="bottom")
    ax.set_xticks(xs, [k for k, _ in axes_specs], fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.2, len(axes_specs) - 0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = ScalarMappable(cmap=cmap, norm=Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=metric, pad=0.02)
    ax.set_title(f"Search trials ({len(usable)}), axes normalised to their ranges "
                 "(log scales in log)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------


def tsne_embedding(encoder_path: Path, max_points: int = 2000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D t-SNE of the exported encoder's test-split features (a seeded, stratified-enough
    random subset of at most ``max_points``), their labels, and the dataset's name."""
    import torch
    from sklearn.manifold import TSNE

    from sslsearch.config import trial_config
    from sslsearch.reporting.export import load_encoder, read_config
    from sslsearch.trial.augment import normalize
    from sslsearch.trial.trial import load_data

    doc = read_config(encoder_path)
    cfg = trial_config({**doc["trial"], "device": "cpu"}, source=str(encoder_path))
    data = load_data(cfg, torch.device("cpu"))
    encoder = load_encoder(encoder_path)
    feats, labels = [], []
    with torch.inference_mode():
        for x, y in data.test.iter_batches(512, None, shuffle=False, drop_last=False):
            if data.kind == "image":
                x = normalize(x, data.mean, data.std)
            feats.append(encoder(x).float())
            labels.append(y)
    f, y = torch.cat(feats), torch.cat(labels)
    if len(f) > max_points:
        pick = torch.randperm(len(f), generator=torch.Generator().manual_seed(seed))[:max_points]
        f, y = f[pick], y[pick]
    f = torch.nn.functional.normalize(f, dim=1)  # the kNN monitor's cosine geometry
    perplexity = float(min(30.0, max(2.0, (len(f) - 1) / 3)))
    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity,
              n_jobs=1).fit_transform(f.numpy())
    return np.asarray(xy), y.numpy(), data.name


def plot_tsne(xy: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 6))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "nipy_spectral")
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.7,
                   color=cmap(i % 10 if len(classes) <= 10 else i / len(classes)),
                   label=str(c) if len(classes) <= 10 else None)
    if len(classes) <= 10:
        ax.legend(title="class", markerscale=3, fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------


def write_report(folder: Path, comparison_md: str, trials: Sequence[Any],
                 best: Mapping[str, Any], space: SearchSpace, *,
                 winner_encoder: Path | None = None, winner: str | None = None,
                 metric: str = "val_knn_acc", tsne_points: int = 2000) -> list[Path]:
    """Write the plots and ``report.md`` into ``folder``; returns every file written."""
    folder.mkdir(parents=True, exist_ok=True)
    methods = list(best)
    written = [plot_learning_curves(trials, best, folder / CURVES, metric)]
    imp = {m: importance(trials, space, m) for m in methods}
    written.append(plot_importance(imp, folder / IMPORTANCE))
    written.append(plot_parallel(trials, space, methods, folder / PARALLEL, metric))
    tsne_note = "no encoder was exported"
    if winner_encoder is not None:
        try:
            xy, labels, dataset = tsne_embedding(winner_encoder, max_points=tsne_points)
            written.append(plot_tsne(xy, labels, folder / TSNE,
                                     f"t-SNE of {len(labels)} {dataset} test features, best "
                                     f"encoder ({winner}), coloured by class"))
            tsne_note = (f"{len(labels)} test images of {dataset}, features of the best encoder "
                         f"({winner}, selected on validation), L2-normalised, scikit-learn t-SNE")
        except Exception as exc:  # a report without its t-SNE beats no report
            tsne_note = f"t-SNE failed: {type(exc).__name__}: {exc}"
    if not (folder / TSNE).exists():
        written.append(_note_figure(folder / TSNE, "t-SNE", tsne_note))

    lines = ["# Report", "", comparison_md.split("\n", 1)[1].strip(), "",
             "## Learning curves", "",
             "Validation kNN accuracy per epoch: each method's selected search trial (solid) and "
             "its seed re-runs (dashed); the black dashed line is the same kNN on the "
             "standardised raw pixels (`raw_knn_acc`), the grey dotted one the encoders at random "
             "initialisation (`init_knn_acc`, mean over the curves drawn). A curve below the "
             "raw-pixel line: pretraining did not help.", "", f"![learning curves]({CURVES})",
             "",
             "## Parameter importance (fANOVA)", "",
             f"Optuna's FanovaImportanceEvaluator over each method's search trials (objective: "
             f"the last {metric}; failed trials left out).", ""]
    for m, (values, note) in imp.items():
        if values:
            lines.append(f"- **{m}** ({note}): " + ", ".join(
                f"{k} {v:.2f}" for k, v in values.items()))
        else:
            lines.append(f"- **{m}**: not computed: {note}")
    lines += ["", f"![parameter importance]({IMPORTANCE})", "", "## Parallel coordinates", "",
              "Every completed search trial; each axis normalised to its search range (log "
              "scales in log), colour = " + metric + ".", "",
              f"![parallel coordinates]({PARALLEL})", "", "## t-SNE of the best encoder", "",
              tsne_note + ".", "", f"![t-SNE]({TSNE})", ""]
    (folder / REPORT).write_text("\n".join(lines))
    written.append(folder / REPORT)
    return written
