"""The fair comparison: selection on validation, mean ± std over seeds, one row per method."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

import sslsearch
from sslsearch.config import TrialConfig
from sslsearch.reporting.compare_table import method_rows, ranking, ranking_markdown, table_markdown
from sslsearch.results import TrialRecord, mean_std, select_best

ROW = re.compile(r"^\| (\w+) \| (\d+\.\d+) ± (\d+\.\d+) \|")


def _t(method: str, tid: str, status: str = "finished", probe_val: float | None = 0.5,
       knn: float = 0.5, stage: str = "search", test: float = 0.5, seed: int = 0
       ) -> TrialRecord:
    metrics: dict[str, float] = {"val_knn_acc": knn, "test_knn_acc": knn, "probe_test_acc": test}
    if probe_val is not None:
        metrics["probe_val_acc"] = probe_val
    return TrialRecord(method=method, trial_id=tid, stage=stage, params={"base_lr": 0.001},
                       config={"method": method}, status=status, epochs=[1.0, 2.0],
                       val_knn=[knn, knn], seconds=2.0, metrics=metrics, seed=seed)


def test_select_best_uses_validation_only() -> None:
    trials = [_t("a", "1", probe_val=0.7, test=0.99), _t("a", "2", probe_val=0.8, test=0.1),
              _t("a", "3", status="stopped early", probe_val=None, knn=0.95),
              _t("a", "4", status="failed: collapsed", probe_val=None, knn=0.99)]
    chosen = select_best(trials, "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "2"  # best probe_val_acc, not test
    # No finished trial: the best last val_knn_acc among those that did not fail.
    chosen = select_best(trials[2:], "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "3"
    assert select_best(trials[3:], "val_knn_acc", "max") is None


def test_mean_std_is_sample_std() -> None:
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([]) == (None, None)


def test_table_has_one_row_per_method_with_mean_std() -> None:
    search = {m: [_t(m, f"{m}1"), _t(m, f"{m}2", status="stopped early", probe_val=None)]
              for m in ("simclr", "byol", "vicreg")}
    # Test accuracy falls where validation rises: the order follows validation only.
    seeds = {m: [_t(m, f"{m}s{i}", stage="seed", knn=0.5 + 0.1 * k,
                    test=0.8 - 0.1 * k + 0.01 * i, seed=i)
                 for i in range(3)] for k, m in enumerate(search)}
    best = {m: select_best(ts, "val_knn_acc", "max") for m, ts in search.items()}
    rows = method_rows(search, seeds, best)
    assert [r["method"] for r in rows] == ["vicreg", "byol", "simclr"]  # by confirmed val kNN
    assert rows[0]["search"] == {"trials": 2, "finished": 1, "stopped_early": 1, "failed": 0,
                                 "epochs": 4, "trial_seconds": 4.0}
    table = table_markdown(rows, 3)
    body = [ROW.match(line) for line in table.splitlines()[2:]]
    assert all(body) and len(body) == 3
    assert [m.group(1) for m in body if m] == ["vicreg", "byol", "simclr"]
    first = body[0]
    assert first is not None and float(first.group(2)) == pytest.approx(61.0)
    assert float(first.group(3)) == pytest.approx(1.0)


@pytest.mark.slow  # 77-100 s on the shared 2 cores (Ray start-up, 6 trials, t-SNE)
def test_compare_end_to_end(tmp_path: Path) -> None:
    """Digits, SimCLR and N-pair, 1 search trial each, 2 epochs, its best confirmed on 2 fresh
    seeds: table, plots, MLflow, and the exported best encoder reloads."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "sslsearch.run", "--space", "all_methods.yaml", "--compare",
         "--experiment", "quick", "--methods", "simclr,npair", "--num-samples", "1", "--epochs",
         "2", "--confirm-seeds", "2", "--max-concurrent", "2", "--quiet", "--name", "cmp",
         "--tracking-uri", uri],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    folder = tmp_path / "sslsearch_results" / "cmp"
    doc = json.loads((folder / "comparison.json").read_text())
    assert {r["method"] for r in doc["rows"]} == {"simclr", "npair"}
    for row in doc["rows"]:
        assert row["probe_test_acc"]["n"] == 2 and row["seeds"]["seeds"] == [1, 2]
        assert row["search"]["trials"] == 1 and row["search"]["trial_seconds"] > 0
    md = (folder / "comparison.md").read_text()
    assert len([line for line in md.splitlines() if ROW.match(line)]) == 2
    for name in ("learning_curves.png", "param_importance.png", "parallel_coordinates.png",
                 "tsne.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG"), name
    encoder = sslsearch.load_encoder(folder / "best_encoder")
    assert encoder(torch.zeros(2, 1, 8, 8)).shape[0] == 2

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sslsearch")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sslsearch.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sslsearch.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    confirm = [c for c in children if c.data.tags["sslsearch.stage"] == "confirm"]
    assert len(children) - len(confirm) == 2 and len(confirm) in (4, 6, 8)
    assert all(c.info.status == "FINISHED" for c in children)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparison.md", "comparison.json", "report", "best_encoder"} <= artifacts
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/tsne.png" in report and "report/report.md" in report
    print(f"compare end to end: {time.time() - t0:.0f} s")


def test_each_method_searches_alone_with_its_own_initial_points() -> None:
    import optuna

    from sslsearch.search.space import parse_space

    doc = {"method": {"choice": ["simclr", "vicreg"]},
           "trial": {"base_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
           "methods": {"simclr": {"temperature": {"loguniform": [0.05, 1.0]}}},
           "initial": [{"method": "simclr", "simclr.temperature": 0.2},
                       {"method": "vicreg", "base_lr": 0.001}]}
    space = parse_space(doc, "test")
    only = space.only("simclr")
    assert only.method_names == ("simclr",)
    assert tuple(only.initial) == ({"simclr.temperature": 0.2},)
    config = only(optuna.trial.FixedTrial({"base_lr": 0.001, "simclr.temperature": 0.2}))
    assert config["method"] == "simclr" and config["simclr.temperature"] == 0.2
    assert tuple(space.only("vicreg").initial) == ({"base_lr": 0.001},)
    # a comparison starts each method from its defaults where the space names no first point
    bare = parse_space({k: v for k, v in doc.items() if k != "initial"}, "test",
                       TrialConfig(base_lr=0.002))
    assert bare.only("simclr").initial == ()
    assert bare.only("simclr", from_defaults=True).initial == (
        {"base_lr": 0.002, "simclr.temperature": 0.2},)
    assert space.only("simclr", from_defaults=True).initial == only.initial  # its own kept


BASE = {"raw_knn_acc": 0.40, "raw_test_knn_acc": 0.41, "raw_probe_acc": 0.45,
        "raw_probe_test_acc": 0.50}


def test_table_carries_the_baselines_and_the_differences() -> None:
    """Raw-pixel values and "vs raw pixels" beside probe test, test kNN and val kNN accuracy;
    random init (mean ± std over the seeds) and "vs random init" beside val kNN."""
    search = {"a": [_t("a", "a1")], "b": [_t("b", "b1")]}
    seeds = {"a": [_t("a", f"as{i}", stage="seed", test=0.6 + 0.02 * i, knn=0.5, seed=i)
                   for i in range(2)],
             "b": [_t("b", "bs0", stage="seed", status="failed: nan_loss", seed=0)]}
    for i, t in enumerate([*seeds["a"], *search["a"], *search["b"]]):
        t.metrics.update(BASE, init_knn_acc=0.29 + 0.02 * i)  # per trial: each seed its own
    best = {m: select_best(ts, "val_knn_acc", "max") for m, ts in search.items()}
    rows = {r["method"]: r for r in method_rows(search, seeds, best)}
    a = rows["a"]
    assert a["raw_probe_test_acc"]["mean"] == pytest.approx(0.50)
    assert a["init_knn_acc"]["mean"] == pytest.approx(0.30)
    assert a["vs_raw"] == pytest.approx({"probe_test_acc": 0.11, "test_knn_acc": 0.09,
                                         "val_knn_acc": 0.10, "probe_val_acc": 0.05})
    assert a["vs_init"] == pytest.approx({"val_knn_acc": 0.20})
    # No seed run of b finished: the split's raw baseline is carried from its search trial,
    # its differences are n/a; nothing is invented for the random init (per trial).
    b = rows["b"]
    assert b["raw_knn_acc"]["mean"] == pytest.approx(0.40) and b["init_knn_acc"]["mean"] is None
    assert b["vs_raw"]["val_knn_acc"] is None and b["vs_init"]["val_knn_acc"] is None

    table = table_markdown(list(rows.values()), 2)
    header, _, *body = table.splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[1:12] == ["linear probe test acc (mean ± std, 2 seeds)", "raw pixels",
                          "vs raw pixels", "test kNN acc", "raw pixels", "vs raw pixels",
                          "val kNN acc", "raw pixels", "vs raw pixels", "random init",
                          "vs random init"]
    assert "selected parameters" in cols  # the existing columns stay
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in body}
    assert len(cells["a"]) == len(cols) and ROW.match(body[0])
    assert cells["a"][1:12] == ["61.00 ± 1.41", "50.00", "+11.00", "50.00 ± 0.00", "41.00",
                                "+9.00", "50.00 ± 0.00", "40.00", "+10.00", "30.00 ± 1.41",
                                "+20.00"]
    assert cells["b"][1:12] == ["n/a", "50.00", "n/a", "n/a", "41.00", "n/a", "n/a", "40.00",
                                "n/a", "n/a", "n/a"]
    # Rows of a comparison JSON written before the baselines still render.
    old = {k: v for k, v in a.items() if k not in (*BASE, "init_knn_acc", "vs_raw", "vs_init")}
    line = table_markdown([old], 2).splitlines()[2]
    assert [c.strip() for c in line.strip("|").split("|")][2:4] == ["n/a", "n/a"]
    assert {"raw_knn_acc", "init_knn_acc"} <= set(seeds["a"][0].to_json()["metrics"])


def _ray_result(trial_id: str, metrics: dict[str, Any], error: Exception | None = None,
                **searched: Any) -> Any:
    """A stand-in for a Ray ``Result`` of a ``probe: false`` search over 3 epochs."""
    import pandas as pd

    epochs = [float(e) for e in range(1, int(metrics.get("epoch", 0)) + 1)]
    config = {"_base": {"epochs": 3, "probe": False}, "method": "simclr", "base_lr": 0.001,
              **searched}
    return SimpleNamespace(
        metrics={"trial_id": trial_id, "time_total_s": 1.0, **metrics}, config=config,
        error=error, checkpoint=None,
        metrics_dataframe=pd.DataFrame({"epoch": epochs, "val_knn_acc": [0.5] * len(epochs)}))


def test_record_status_is_trial_status_and_probe_false_trials_can_be_selected() -> None:
    """A probe: false trial that trained all its epochs is finished (not stopped early), and
    is selected on val kNN over a trial ASHA stopped early with a higher one."""
    from sslsearch.results import record

    results = [_ray_result("full", {"epoch": 3.0, "val_knn_acc": 0.7}),
               _ray_result("asha", {"epoch": 1.0, "val_knn_acc": 0.9}),
               _ray_result("short", {"epoch": 2.0, "val_knn_acc": 0.6}, epochs=2),
               _ray_result("nan", {"epoch": 2.0, "val_knn_acc": 0.0, "failure_reason": "nan_loss"}),
               _ray_result("err", {"epoch": 1.0, "val_knn_acc": 0.95}, error=RuntimeError("x"))]
    trials = [record(r, "search", ["base_lr"]) for r in results]
    assert [t.status for t in trials] == ["finished", "stopped early", "finished",
                                          "failed: nan_loss", "error"]
    assert trials[0].epochs == [1.0, 2.0, 3.0] and trials[0].params == {"base_lr": 0.001}
    chosen = select_best(trials, "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "full"
    # Only trials stopped early (or failed): the best val kNN of those stopped early.
    chosen = select_best([trials[1], *trials[3:]], "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "asha"
    # The search's metric ranks; a probe only breaks ties: a probed trial with a lower val kNN
    # does not win, one with the same val kNN does.
    low = _t("simclr", "probed-low", probe_val=0.99, knn=0.1)
    chosen = select_best([*trials, low], "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "full"
    tie = _t("simclr", "probed-tie", probe_val=0.55, knn=0.7)
    chosen = select_best([*trials, tie], "val_knn_acc", "max")
    assert chosen is not None and chosen.trial_id == "probed-tie"

    best = select_best(trials, "val_knn_acc", "max")
    rows = method_rows({"simclr": trials}, {"simclr": []}, {"simclr": best})
    assert rows[0]["search"]["finished"] == 2 and rows[0]["search"]["stopped_early"] == 1
    assert rows[0]["search"]["failed"] == 2
    assert "| full (search val_knn_acc 0.7) |" in table_markdown(rows, 2)


def test_the_ranking_marks_methods_it_cannot_tell_apart() -> None:
    """Paired over the shared fresh seeds: simclr beats byol on every seed by about a point (told
    apart); byol and vicreg swap places seed by seed (≈); SupCon is marked supervised."""
    knn = {"simclr": (0.82, 0.83, 0.84), "byol": (0.81, 0.82, 0.83),
           "vicreg": (0.83, 0.80, 0.82), "supcon": (0.70, 0.71, 0.72)}
    search = {m: [_t(m, f"{m}0")] for m in knn}
    seeds = {m: [_t(m, f"{m}s{i}", stage="confirm", knn=v, seed=i + 1)
                 for i, v in enumerate(vals)] for m, vals in knn.items()}
    for run in seeds["supcon"]:
        run.config = {"method": "supcon"}
    rows = method_rows(search, seeds, {m: s[0] for m, s in search.items()})
    assert [r["method"] for r in rows] == ["simclr", "byol", "vicreg", "supcon"]
    ranked = ranking(rows)
    assert [r["indistinguishable"] for r in ranked] == [False, True, False, False]
    assert ranked[0]["vs_next"].mean == pytest.approx(0.01)
    text = ranking_markdown(rows, "val_knn_acc")
    assert "1. **simclr** 83.00 ± 1.00 [80.52, 85.48]; vs byol: +1.00 [+1.00, +1.00]" in text
    assert "2. **byol** 82.00 ± 1.00" in text
    assert [line[:1] for line in text.splitlines() if line.endswith(" ≈")] == ["2"]
    assert "| supcon (supervised) |" in table_markdown(rows, 3)


def test_a_comparison_without_labels_ranks_by_a_label_free_metric_and_says_how_far_to_trust_it(
        ) -> None:
    from sslsearch.reporting import compare_table

    rankme = {"simclr": (41.0, 42.0, 43.0), "vicreg": (30.0, 29.0, 31.0)}
    search = {m: [_t(m, f"{m}0")] for m in rankme}
    seeds = {m: [TrialRecord(method=m, trial_id=f"{m}{i}", stage="confirm", params={},
                             config={"method": m}, status="finished", epochs=[1.0],
                             val_knn=[0.0], seconds=1.0, metrics={"rankme": v}, seed=i + 1)
                 for i, v in enumerate(vals)] for m, vals in rankme.items()}
    rows = method_rows(search, seeds, {m: s[0] for m, s in search.items()}, "rankme", "max")
    info = {"name": "c", "command": "x", "space": "all_methods.yaml", "experiment": "e.yaml",
            "dataset": "imagefolder", "backbone": "small_cnn", "epochs": 2, "num_samples": 1,
            "search_seed": 0, "metric": "rankme", "confirm_top": 1, "seeds": [1, 2, 3],
            "n_seeds": 3, "labels": False, "wall_seconds": 1.0}
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(compare_table.LABEL_FREE_AGREEMENT, "rankme")
        md = compare_table.comparison_markdown(info, rows)
    assert "1. **simclr** 42.00 ± 1.00" in md and "vs vicreg: +12.00 [" in md  # not × 100
    assert "not measured against labels" in md and "| method |" not in md  # no accuracy table
    assert "at Spearman ρ = +0.32" in compare_table.comparison_markdown(info, rows)  # measured
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(compare_table.LABEL_FREE_AGREEMENT, "rankme", (0.74, "Fashion-MNIST"))
        md = compare_table.comparison_markdown(info, rows)
    assert "at Spearman ρ = +0.74" in md and "not a promise" in md


def test_compare_accepts_an_unlabeled_experiment_with_a_label_free_metric(tmp_path: Path) -> None:
    """Refused before: --compare needed labels. Now only a labeled metric without labels is."""
    from sslsearch.cli import build_parser
    from sslsearch.compare import _plan
    from sslsearch.errors import ConfigError
    from tests.test_label_free_search import _experiment, write_unlabeled_folder

    write_unlabeled_folder(tmp_path / "photos")
    argv = ["--space", "all_methods", "--compare", "--methods", "simclr,vicreg",
            "--experiment", str(_experiment(tmp_path, "rankme")), "--storage", str(tmp_path)]
    c = _plan(build_parser().parse_args(argv), argv)
    assert c.methods == ["simclr", "vicreg"] and not c.exp.trial.labels
    argv[argv.index("--experiment") + 1] = str(_experiment(tmp_path, "val_knn_acc"))
    with pytest.raises(ConfigError, match="needs labels"):
        _plan(build_parser().parse_args(argv), argv)
    # SupCon trains on the labels the experiment hides: refused before anything runs (it trained
    # on them before, and its "label-free" search finished).
    argv[argv.index("--experiment") + 1] = str(_experiment(tmp_path, "rankme"))
    argv[argv.index("--methods") + 1] = "supcon,simclr"
    with pytest.raises(ConfigError, match="supcon trains on them"):
        _plan(build_parser().parse_args(argv), argv)


def test_a_labeled_comparison_says_how_a_label_free_metric_would_have_ranked_its_methods() -> None:
    """Five methods whose confirmed RankMe orders them exactly as their val kNN (ρ = +1) and whose
    α-ReQ reverses the order (ρ = −1); LiDAR was not computed (no row)."""
    from sslsearch.reporting.compare_table import agreement_markdown, method_agreement

    names = ["simclr", "byol", "vicreg", "barlow", "moco"]
    search = {m: [_t(m, f"{m}0")] for m in names}
    seeds = {m: [TrialRecord(method=m, trial_id=f"{m}{i}", stage="confirm", params={},
                             config={"method": m}, status="finished", epochs=[1.0],
                             val_knn=[0.0], seconds=1.0, seed=i + 1,
                             metrics={"val_knn_acc": 0.80 - 0.01 * rank + 0.001 * i,
                                      "rankme": 100.0 - rank, "alpha_req_score": float(rank)})
                 for i in range(3)] for rank, m in enumerate(names)}
    rows = method_rows(search, seeds, {m: s[0] for m, s in search.items()})
    found = {a["metric"]: a for a in method_agreement(rows)}
    assert found["rankme"]["rho"] == pytest.approx(1.0) and found["rankme"]["n"] == 5
    assert found["alpha_req_score"]["rho"] == pytest.approx(-1.0)
    assert found["rankme"]["order"] == names and found["lidar"]["n"] == 0
    md = agreement_markdown(method_agreement(rows))
    assert "| rankme | +1.00 | 5 | simclr, byol, vicreg |" in md
    assert "| alpha_req_score | −1.00 |" in md or "| alpha_req_score | -1.00 |" in md
    assert "lidar" not in md
    assert "too few methods" in agreement_markdown(method_agreement(rows[:3]))
