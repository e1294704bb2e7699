"""Baselines next to every result: summary.md, MLflow's parent run, the train CLI line.

Unit tests of the formatting and logging on hand-built results (no Ray sweep; a local sqlite
MLflow store). The end-to-end checks ride on the sweeps of tests/test_sweep.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from sslsearch import results, train
from sslsearch.reporting.summary import summarize
from sslsearch.results import baseline_line, delta_points, fmt_delta
from sslsearch.search.tracking import MLflowTrialCallback, Tracker
from sslsearch.trial import baselines

RAW = {"raw_knn_acc": 0.787, "raw_test_knn_acc": 0.78, "raw_probe_acc": 0.82,
       "raw_probe_test_acc": 0.86}

# The columns of summary.md's tables, by position (the "vs …" headers repeat).
COLS = ("method", "trial", "epochs", "status", "val_knn", "val_vs_raw", "val_vs_init",
        "probe_val", "probe_val_vs_raw", "probe_test", "probe_test_vs_raw", "parameters")


def _result(trial_id: str, metrics: dict[str, Any], method: str = "simclr") -> Any:
    """A stand-in for a Ray ``Result``: what ``summarize`` reads."""
    return SimpleNamespace(metrics={"trial_id": trial_id, **metrics},
                           config={"method": method, "base_lr": 0.001}, path=f"/x/{trial_id}",
                           checkpoint=None)


def _rows(text: str, section: str) -> dict[str, dict[str, str]]:
    """``{trial id: {column: cell}}`` of one of the summary's tables."""
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith(("| method", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == len(COLS), line
            out[cells[1]] = dict(zip(COLS, cells, strict=True))
    return out


def test_baseline_names_have_one_owner_that_imports_no_torch() -> None:
    """The trials report the names the summary reads (one owner, results.py), and the command's
    side of them imports no torch."""
    assert baselines.RAW_KEYS is results.RAW_KEYS and baselines.INIT_KEY is results.INIT_KEY
    assert tuple(results.RAW_VS.values()) == results.RAW_KEYS
    code = "import sys, sslsearch.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("points,digits,text", [
    (1.3, 1, "+1.3"), (-2.0, 1, "−2.0"), (-0.04, 1, "±0.0"), (0.0, 2, "±0.00"),
    (12.345, 2, "+12.35"), (None, 1, "n/a")])
def test_fmt_delta_is_signed_points(points: float | None, digits: int, text: str) -> None:
    assert fmt_delta(points, digits) == text


def test_delta_points_needs_two_finite_numbers() -> None:
    assert delta_points(0.8, 0.787) == pytest.approx(1.3)
    assert delta_points(0.8, None) is None and delta_points(None, 0.8) is None
    assert delta_points(0.8, math.nan) is None and delta_points(True, 0.5) is None


def test_summary_reports_baselines_and_signed_deltas() -> None:
    results = [
        # finished: every accuracy and its difference to raw pixels (and to random init)
        _result("fin", {"epoch": 3, "val_knn_acc": 0.80, "probe_val_acc": 0.85,
                        "probe_test_acc": 0.84, **RAW, "init_knn_acc": 0.75}),
        # stopped early by ASHA: no probe, so no probe difference (empty, not zero)
        _result("stop", {"epoch": 1, "val_knn_acc": 0.70, **RAW, "init_knn_acc": 0.76}),
        # an old result, from before the baselines: renders, with n/a
        _result("old", {"epoch": 3, "val_knn_acc": 0.90, "probe_val_acc": 0.91,
                        "probe_test_acc": 0.92}, method="vicreg"),
        # a failed trial: its placeholder result carries no baselines
        _result("nan", {"val_knn_acc": 0.0, "failure_reason": "nan_loss"}, method="byol"),
    ]
    text, rows = summarize(results, "val_knn_acc", "max")
    head, tables = text.split("## Best trial per method", 1)
    assert "raw pixels (standardised) val kNN 0.787" in head
    assert "linear probe val 0.82 / test 0.86" in head
    assert "random-init encoder val kNN 0.75–0.76" in head  # per trial: the range
    assert "vs raw pixels" in tables and "vs random init" in tables

    every = _rows(text, "## All trials")
    assert set(every) == {"fin", "stop", "old", "nan"}
    fin = every["fin"]
    assert (fin["val_vs_raw"], fin["val_vs_init"]) == ("+1.3", "+5.0")
    assert (fin["probe_val_vs_raw"], fin["probe_test_vs_raw"]) == ("+3.0", "−2.0")
    stop = every["stop"]
    assert (stop["val_vs_raw"], stop["val_vs_init"]) == ("−8.7", "−6.0")
    assert stop["probe_val_vs_raw"] == "" and stop["probe_test_vs_raw"] == ""
    assert stop["probe_val"] == stop["probe_test"] == ""  # empty cells, never "None"
    assert "None" not in text
    old = every["old"]
    assert old["val_vs_raw"] == old["val_vs_init"] == old["probe_test_vs_raw"] == "n/a"
    assert every["nan"]["val_vs_raw"] == "n/a"
    best = _rows(text, "## Best trial per method")
    assert best["fin"] == fin and best["old"] == old

    by_id = {r["trial_id"]: r for r in rows}
    assert by_id["fin"]["baselines"] == {**RAW, "init_knn_acc": 0.75}
    assert by_id["old"]["baselines"] == {}


def test_summary_of_results_without_baselines_says_so() -> None:
    text, _ = summarize([_result("a", {"epoch": 3, "val_knn_acc": 0.9, "probe_val_acc": 0.9,
                                       "probe_test_acc": 0.9})], "val_knn_acc", "max")
    assert text.startswith("Trials ranked by `val_knn_acc` (maximised)")
    assert "\n**Baselines**: n/a" in text
    assert _rows(text, "## All trials")["a"]["probe_val_vs_raw"] == "n/a"


def test_baseline_line_gives_a_range_when_trials_differ() -> None:
    rows = [{"baselines": {"raw_knn_acc": 0.78, "init_knn_acc": 0.7}},
            {"baselines": {"raw_knn_acc": 0.79}}]  # a searched k; probe: false
    line = baseline_line(rows)
    assert "val kNN 0.78–0.79" in line and "linear probe val n/a / test n/a" in line
    assert "encoder val kNN 0.7 " in line


def _trial(trial_id: str) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"method": "simclr"})


def test_parent_run_gets_the_raw_baselines_once_across_a_resume(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    no_probe = {k: v for k, v in RAW.items() if "probe" not in k}
    callback = MLflowTrialCallback(uri, "sslsearch", "sw", max_epochs=2,
                                   outbox=tmp_path / "outbox.jsonl")
    # A trial without a probe carries only the kNN baselines; one with a probe adds the rest.
    for epoch in (1, 2):
        callback.on_trial_result(0, [], _trial("t1"), {"epoch": epoch, "val_knn_acc": 0.8,
                                                       **no_probe, "init_knn_acc": 0.7})
    callback.on_trial_result(0, [], _trial("t2"), {"epoch": 1, "val_knn_acc": 0.8, **RAW,
                                                   "init_knn_acc": 0.71})
    # A resumed sweep: a new driver, new callbacks and trackers, the same results again.
    again = MLflowTrialCallback(uri, "sslsearch", "sw", max_epochs=2,
                                outbox=tmp_path / "outbox.jsonl")
    again.on_trial_result(0, [], _trial("t2"), {"epoch": 2, "val_knn_acc": 0.8, **RAW,
                                                "init_knn_acc": 0.71})
    assert Tracker(uri, "sslsearch", "sw").log_parent_baselines(RAW) == []  # the sweep's end

    client = MlflowClient(tracking_uri=uri)
    tracker = Tracker(uri, "sslsearch", "sw")
    parent = client.get_run(tracker.parent_id)
    assert parent.data.metrics == pytest.approx(RAW)  # init_knn_acc is per trial: children only
    for key in RAW:
        assert len(client.get_metric_history(tracker.parent_id, key)) == 1, key
    child = tracker.child("t2", "", {})
    assert [m.step for m in client.get_metric_history(child, "raw_knn_acc")] == [1, 2]
    assert client.get_run(child).data.metrics["init_knn_acc"] == pytest.approx(0.71)


def test_train_cli_line_shows_raw_and_init(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    epoch = {"epoch": 1.0, "train_loss": 1.0, "val_knn_acc": 0.794, "embed_std_ratio": 0.5,
             "effective_rank": 9.0, "epoch_seconds": 1.0, "images_per_second": 100.0,
             "raw_knn_acc": 0.790, "init_knn_acc": 0.747}
    last = {**epoch, "epoch": 2.0, "val_knn_acc": 0.770, "probe_val_acc": 0.812,
            "probe_test_acc": 0.805, "raw_probe_acc": 0.800, "raw_probe_test_acc": 0.805}
    old = {k: v for k, v in last.items() if not k.startswith(("raw_", "init_"))}

    def fake_run(cfg: Any, report: Any = None, checkpoint_dir: Any = None) -> dict[str, float]:
        for m in (epoch, last, old):
            report(m, None)
        return old

    monkeypatch.setattr(train, "run", fake_run)
    assert train.main(["--method", "simclr", "--epochs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert "val_knn 0.794 (raw 0.790, +0.4; init 0.747)" in lines[0]
    assert "val_knn 0.770 (raw 0.790, −2.0; init 0.747)" in lines[1]
    assert "probe val 0.812 (raw 0.800, +1.2) test 0.805 (raw 0.805, ±0.0)" in lines[1]
    assert "val_knn 0.770  " in lines[2] and "probe val 0.812 test 0.805" in lines[2]
