"""The data-set-size curves' files (:mod:`sslsearch.sizes`):

* ``sizes.json``: every run's record, rewritten after each run, so that an interrupted command
  continues where it stopped;
* ``sizes.csv``: every run, one row each (``sizes-epochs.*`` for ``--budget epochs``);
* ``sizes.md``: mean ± sd over the seeds per method and size, for the validation kNN and the
  test linear probe, with the raw-pixel and random-init rows of the same splits; the epochs and
  steps per size; and i-Mix's paired gain over N-pair at each size, in a sentence computed from
  the runs, so that the reader sees whether it grows as the data shrinks;
* ``sizes.png``: both accuracies against the size (log x), one line per method with ±sd error
  bars, raw pixels and random init dashed.

The standard library and matplotlib only (not :mod:`sslsearch.reporting.report`, which imports
the search space and with it Optuna): the sizes command runs without Ray, Optuna or MLflow.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot
import matplotlib.pyplot as plt

from sslsearch.errors import ConfigError
from sslsearch.results import mean_std, number

RESULTS_JSON = "sizes.json"
RAW, INIT = "raw pixels", "random init"
# (metric, its name, its raw-pixel counterpart, its random-init counterpart), one per panel.
PANELS = (("val_knn_acc", "validation kNN", "raw_knn_acc", "init_knn_acc"),
          ("probe_test_acc", "test linear probe", "raw_probe_test_acc", "init_probe_test_acc"))
CSV_COLUMNS = ("method", "size", "seed", "budget", "epochs", "steps", "steps_per_epoch",
               "warmup_epochs", "batch_size", "val_knn_acc", "probe_val_acc", "probe_test_acc",
               "test_knn_acc", "raw_knn_acc", "raw_test_knn_acc", "raw_probe_acc",
               "raw_probe_test_acc", "init_knn_acc", "init_probe_val_acc", "init_probe_test_acc",
               "train_loss", "seconds", "failure")
GAIN = ("imix", "npair")  # the paired difference the issue asks about: i-Mix over its base

Stat = tuple[float, float, int]  # mean, sample sd (0 for one value), how many


def read_runs(path: Path, identity: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The runs ``path`` already holds (none without the file); a file of other settings than
    ``identity`` is refused, so that no curve mixes two setups."""
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
        runs, theirs = list(doc["runs"]), dict(doc["identity"])
        for r in runs:
            str(r["method"]), int(r["size"]), int(r["seed"]), str(r["budget"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc!r}); move it away to start over") from None
    if theirs != identity:
        raise ConfigError(f"{path} holds runs of other settings (experiment "
                          f"{theirs.get('experiment')}); give another --out")
    return runs


def write_runs(path: Path, identity: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]
               ) -> None:
    """All runs, replacing the file at once: an interruption leaves the old file or the new."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"identity": dict(identity), "runs": list(runs)}, indent=1))
    os.replace(tmp, path)


def finished(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in runs if not r.get("failure")]


def _stat(values: Sequence[float]) -> Stat | None:
    mean, sd = mean_std(values)
    return None if mean is None or sd is None else (mean, sd, len(values))


def curves(runs: Sequence[Mapping[str, Any]], metric: str, raw: str, init: str
           ) -> dict[str, dict[int, Stat]]:
    """Per line (each method, then raw pixels and random init), per size: the mean, sd and count
    over the seeds. A baseline is one value per size and seed (its split's; the methods of one
    seed share it), so it is averaged over the methods first and counted once per seed."""
    values: dict[str, dict[int, list[float]]] = {}
    per_split: dict[str, dict[tuple[int, int], list[float]]] = {RAW: {}, INIT: {}}
    for r in finished(runs):
        size, seed = int(r["size"]), int(r["seed"])
        if (v := number(r.get(metric))) is not None:
            values.setdefault(str(r["method"]), {}).setdefault(size, []).append(v)
        for line, key in ((RAW, raw), (INIT, init)):
            if (b := number(r.get(key))) is not None:
                per_split[line].setdefault((size, seed), []).append(b)
    for line, splits in per_split.items():
        for (size, _), bs in sorted(splits.items()):
            values.setdefault(line, {}).setdefault(size, []).append(sum(bs) / len(bs))
    return {line: {size: s for size, vs in sorted(by_size.items()) if (s := _stat(vs))}
            for line, by_size in values.items()}


def paired_gain(runs: Sequence[Mapping[str, Any]], metric: str, a: str = GAIN[0],
                b: str = GAIN[1]) -> dict[int, Stat]:
    """Per size, ``a − b`` in percentage points over the seeds where both finished: the mean and
    sd of the paired differences (same subset, validation split and initial backbone)."""
    acc = {(str(r["method"]), int(r["size"]), int(r["seed"])): v for r in finished(runs)
           if (v := number(r.get(metric))) is not None}
    out: dict[int, Stat] = {}
    for size in sorted({s for _, s, _ in acc}):
        seeds = sorted({seed for m, s, seed in acc if s == size})
        diffs = [100 * (acc[a, size, seed] - acc[b, size, seed]) for seed in seeds
                 if (a, size, seed) in acc and (b, size, seed) in acc]
        if (s := _stat(diffs)) is not None:
            out[size] = s
    return out


def gain_sentence(gains: Mapping[int, Stat], label: str) -> str:
    """i-Mix − N-pair at each size in words, and whether it grows as the data shrinks: from the
    smallest size to the largest, at every step, and how often it is within one sd of zero."""
    if not gains:
        return (f"i-Mix − N-pair ({label}): no size has finished runs of both on the same seed.")
    parts = "; ".join(f"{size:,} images {m:+.2f}" + (f" ± {sd:.2f} ({n} seeds)" if n > 1
                                                      else " (1 seed)")
                      for size, (m, sd, n) in gains.items())
    text = (f"i-Mix's gain over N-pair on the {label} (percentage points, mean ± sd of the paired "
            f"difference over seeds): {parts}.")
    means = [m for m, _, _ in gains.values()]
    sizes = list(gains)
    if len(means) > 1:
        small, large = means[0], means[-1]
        if all(x > y for x, y in zip(means, means[1:], strict=False)):
            trend = "It grows at every step as the data shrinks"
        elif small > large:
            trend = "It is larger at the smallest size than at the largest, not at every step"
        else:
            trend = "It does not grow as the data shrinks"
        text += (f" {trend} ({small:+.2f} at {sizes[0]:,} images, {large:+.2f} at "
                 f"{sizes[-1]:,}).")
    noisy = sum(abs(m) <= sd for m, sd, n in gains.values() if n > 1)
    if any(n > 1 for _, _, n in gains.values()):
        text += f" It is within one sd of zero at {noisy} of {len(gains)} sizes."
    return text


def schedule_rows(runs: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, int, int, float]]:
    """(size, epochs, steps an epoch, steps, warm-up epochs) per size, as the runs trained."""
    return sorted({(int(r["size"]), int(r["epochs"]), int(r["steps_per_epoch"]),
                    int(r["steps"]), float(r["warmup_epochs"])) for r in runs})


def _cell(s: Stat | None, most: int) -> str:
    if s is None:
        return "–"
    mean, sd, n = s  # one seed has no sd: its value alone
    text = f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if n > 1 else "")
    return text + (f" (n={n})" if n < most else "")


def accuracy_table(runs: Sequence[Mapping[str, Any]], panel: tuple[str, str, str, str]) -> str:
    metric, label, raw, init = panel
    lines = curves(runs, metric, raw, init)
    sizes = sorted({size for by_size in lines.values() for size in by_size})
    most = max((n for by_size in lines.values() for _, _, n in by_size.values()), default=0)
    rows = [f"| {label}, % | " + " | ".join(f"{s:,}" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes)]
    order = [m for m in lines if m not in (RAW, INIT)] + [m for m in (RAW, INIT) if m in lines]
    for line in order:
        name = f"*{line}*" if line in (RAW, INIT) else line
        rows.append(f"| {name} | " + " | ".join(_cell(lines[line].get(s), most)
                                                for s in sizes) + " |")
    return "\n".join(rows)


def markdown(runs: Sequence[Mapping[str, Any]], budget: str) -> str:
    rule = ("equal optimisation steps (the experiment's own, rounded up to whole epochs)"
            if budget == "steps" else "equal epochs (the experiment's)")
    out = [f"# Accuracy against the number of pretraining images ({budget} budget)", "",
           f"Budget: {rule}. Mean ± sample sd over seeds, in %; raw pixels and random init are "
           "the baselines of the same splits (`python -m sslsearch.sizes`).", "",
           "| size | epochs | steps an epoch | steps | warm-up epochs |", "|---|---|---|---|---|"]
    out += [f"| {s:,} | {e} | {p} | {t} | {w:.2f} |" for s, e, p, t, w in schedule_rows(runs)]
    for panel in PANELS:
        out += ["", accuracy_table(runs, panel), "",
                gain_sentence(paired_gain(runs, panel[0]), panel[1])]
    failed = [r for r in runs if r.get("failure")]
    if failed:
        out += ["", "Failed runs (left out above): " + ", ".join(
            f"{r['method']} size {r['size']} seed {r['seed']} ({r['failure']})" for r in failed)]
    return "\n".join(out) + "\n"


def plot(runs: Sequence[Mapping[str, Any]], path: Path, budget: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for ax, (metric, label, raw, init) in zip(axes, PANELS, strict=True):
        lines = curves(runs, metric, raw, init)
        methods = [m for m in lines if m not in (RAW, INIT)]
        for line, by_size in lines.items():
            style: dict[str, Any] = (
                {"color": "black" if line == RAW else "grey", "ls": "--", "marker": "s",
                 "ms": 4} if line in (RAW, INIT)
                else {"color": cmap(methods.index(line) % 10), "marker": "o"})
            xs = list(by_size)
            ax.errorbar(xs, [100 * by_size[x][0] for x in xs], capsize=3, label=line,
                        yerr=[100 * by_size[x][1] for x in xs], **style)
        sizes = sorted({s for by_size in lines.values() for s in by_size})
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("pretraining images (log scale)")
        ax.set_ylabel(f"{label} accuracy (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Accuracy against the number of pretraining images ({budget} budget; "
                 "mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_stem(budget: str) -> str:
    """``sizes`` for the default budget (equal steps), ``sizes-epochs`` for the other: both can
    share one folder (and its ``sizes.json``) without one's report overwriting the other's."""
    return "sizes" if budget == "steps" else f"sizes-{budget}"


def write_report(folder: Path, runs: Sequence[Mapping[str, Any]], budget: str
                 ) -> tuple[Path, Path, Path]:
    """The CSV, Markdown and PNG of ``runs`` (one budget's) in ``folder``."""
    csv_path, md_path, png_path = (folder / f"{report_stem(budget)}.{ext}"
                                   for ext in ("csv", "md", "png"))
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(runs, key=lambda r: (r["method"], r["size"], r["seed"])))
    md_path.write_text(markdown(runs, budget))
    return csv_path, md_path, plot(runs, png_path, budget)
