"""The comparison report: plots are real, non-empty PNGs; fANOVA degrades gracefully."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from sslsearch.config import load_experiment
from sslsearch.reporting.export import export_encoder
from sslsearch.reporting.report import (
    CURVES,
    IMPORTANCE,
    PARALLEL,
    REPORT,
    TSNE,
    importance,
    write_report,
)
from sslsearch.results import TrialRecord
from sslsearch.search.space import load_space
from sslsearch.trial.trial import build_method, load_data

PNG = b"\x89PNG\r\n\x1a\n"


def _space() -> Any:
    return load_space("all_methods", load_experiment("quick").trial)


def _trial(method: str, i: int, stage: str = "search", value: float | None = None,
           status: str = "finished") -> TrialRecord:
    v = 0.5 + 0.04 * i if value is None else value
    params = {"base_lr": 1e-3 * (1 + i), "batch_size": [64, 128, 256][i % 3],
              "weight_decay": 1e-5 * (1 + i), "crop_min_scale": 0.2 + 0.1 * i,
              "jitter_strength": 0.25 * i}
    if method == "simclr":
        params.update({"simclr.temperature": 0.1 + 0.1 * i,
                       "simclr.proj_hidden_dim": [512, 2048][i % 2],
                       "simclr.proj_output_dim": [64, 128][i % 2]})
    if method == "vicreg":
        params.update({"vicreg.sim_coeff": 5.0 + i, "vicreg.std_coeff": 20.0 + i,
                       "vicreg.cov_coeff": 1.0 + 0.1 * i})
    return TrialRecord(method=method, trial_id=f"{method}{stage}{i}", stage=stage,
                       params=params, config={"method": method, **params}, status=status,
                       epochs=[1.0, 2.0, 3.0], val_knn=[v - 0.2, v - 0.1, v], seconds=3.0,
                       metrics={"val_knn_acc": v, "probe_val_acc": v, "probe_test_acc": v},
                       seed=i if stage == "seed" else 0)


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 2000 and data.startswith(PNG)


def test_importance_needs_two_completed_trials_and_varying_params() -> None:
    space = _space()
    values, note = importance([_trial("simclr", 0)], space, "simclr")
    assert values is None and "needs ≥ 2" in note
    same = [dataclasses.replace(_trial("simclr", 0), trial_id=f"t{i}") for i in range(3)]
    values, note = importance(same, space, "simclr")
    assert values is None and "no parameter varied" in note
    values, note = importance([_trial("simclr", i) for i in range(5)], space, "simclr")
    assert values is not None and "too few to trust" in note
    assert set(values) <= {"base_lr", "batch_size", "weight_decay", "crop_min_scale",
                           "jitter_strength", "simclr.temperature", "simclr.proj_hidden_dim",
                           "simclr.proj_output_dim"}
    assert sum(values.values()) == pytest.approx(1.0, abs=1e-6)


def _encoder(tmp_path: Path) -> Path:
    """An exported (untrained: the plot only needs an encoder) small CNN for digits."""
    cfg = dataclasses.replace(load_experiment("quick").trial, device="cpu", method="simclr",
                              method_params={})
    method = build_method(cfg, load_data(cfg, torch.device("cpu")))
    return export_encoder(method.state_dict(), cfg, tmp_path / "encoder")


def test_write_report_plots_are_nonempty_pngs(tmp_path: Path) -> None:
    trials = [_trial(m, i) for m in ("simclr", "vicreg") for i in range(4)]
    trials += [_trial(m, i, stage="seed") for m in ("simclr", "vicreg") for i in range(2)]
    trials.append(_trial("vicreg", 9, status="failed: collapsed", value=0.0))
    best = {m: next(t for t in trials if t.method == m and t.trial_id.endswith("search3"))
            for m in ("simclr", "vicreg")}
    md = "# Method comparison x\n\n| method | acc |\n|---|---|\n| simclr | 1 ± 0 |\n"
    written = write_report(tmp_path / "out", md, trials, best, _space(),
                           winner_encoder=_encoder(tmp_path), winner="simclr", tsne_points=80)
    out = tmp_path / "out"
    for name in (CURVES, IMPORTANCE, PARALLEL, TSNE):
        assert out / name in written and _is_png(out / name), name
    text = (out / REPORT).read_text()
    assert "| simclr | 1 ± 0 |" in text
    for name in (CURVES, IMPORTANCE, PARALLEL, TSNE):
        assert f"]({name})" in text
    assert "t-SNE failed" not in text and "80 test images of digits" in text


def test_write_report_degrades_without_trials_or_encoder(tmp_path: Path) -> None:
    best: dict[str, Any] = {"simclr": None}
    written = write_report(tmp_path, "# T\n\nnothing\n", [], best, _space())
    for name in (CURVES, IMPORTANCE, PARALLEL, TSNE):
        assert _is_png(tmp_path / name), name
    assert tmp_path / REPORT in written
    assert "not computed: 0 completed trial(s)" in (tmp_path / REPORT).read_text()


def test_learning_curves_draw_the_raw_pixel_and_random_init_baselines() -> None:
    import matplotlib.pyplot as plt

    from sslsearch.reporting.report import learning_curves_figure

    trials = [_trial(m, i, stage="seed") for m in ("simclr", "vicreg") for i in range(2)]
    best = {m: _trial(m, 3) for m in ("simclr", "vicreg")}
    for i, t in enumerate([*trials, *best.values()]):
        t.metrics.update(raw_knn_acc=0.55, init_knn_acc=0.40 + 0.01 * i)
    fig = learning_curves_figure(trials, best)
    lines = {str(line.get_label()): line for line in fig.axes[0].get_lines()}
    raw = lines["raw pixels (0.550)"]
    assert raw.get_linestyle() == "--" and list(raw.get_ydata()) == [0.55, 0.55]
    init = lines["random init (mean of 6: 0.425)"]
    assert init.get_linestyle() == ":" and init.get_ydata()[0] == pytest.approx(0.425)
    plt.close(fig)
    # Results from before the baselines: the curves alone.
    fig = learning_curves_figure([_trial("simclr", 1, stage="seed")],
                                 {"simclr": _trial("simclr", 0)})
    labels = [str(line.get_label()) for line in fig.axes[0].get_lines()]
    plt.close(fig)
    assert not any(label.startswith(("raw pixels", "random init")) for label in labels)
    assert learning_curves_figure([], {"simclr": None}) is None
