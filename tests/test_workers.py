"""``--workers-per-trial`` (issue 33): the flag and field, how resources are sized, the requests
refused before any trial, the Ray glue's small parts. The sweeps themselves are in
tests/test_workers_sweep.py (slow)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from sslsearch.cli import Overrides, build_parser
from sslsearch.config import SearchConfig, load_experiment
from sslsearch.errors import ConfigError
from sslsearch.results import FolderCheckpoint, result_checkpoint
from sslsearch.search import sweep, trainable_workers


def test_the_flag_sets_the_experiments_field_and_one_is_the_default() -> None:
    exp = load_experiment("quick")
    assert exp.search.workers_per_trial == 1
    args = build_parser().parse_args(["--space", "vicreg.yaml", "--workers-per-trial", "2"])
    assert Overrides.from_args(args).apply(exp).search.workers_per_trial == 2
    # A sweep file written before the flag existed resumes with the experiment's value.
    saved = Overrides.saved({"seed": 0}, "sslsearch_sweep.json")
    assert saved.apply(exp).search.workers_per_trial == 1


def test_zero_workers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("search:\n  workers_per_trial: 0\n")
    with pytest.raises(ConfigError, match="workers_per_trial = 0 is out of range"):
        load_experiment(str(path))
    with pytest.raises(ConfigError, match="--workers-per-trial"):  # one line, exit 2 (main)
        build_parser().parse_args(["--workers-per-trial", "0"])


def test_a_trial_asks_its_workers_resources_and_a_sliver_for_its_driver() -> None:
    one = SearchConfig(cpus_per_trial=1.5, gpus_per_trial=0.5)
    assert [(k, v) for k, v, _ in trainable_workers.requests(one)] == [("CPU", 1.5), ("GPU", 0.5)]
    two = dataclasses.replace(one, workers_per_trial=2)
    assert [(k, v) for k, v, _ in trainable_workers.requests(two)] == [
        ("CPU", 2 * 1.5 + trainable_workers.DRIVER_CPU), ("GPU", 1.0)]
    assert trainable_workers.local_cpus(one) is None  # Ray's default: the cores
    assert trainable_workers.local_cpus(two) == (__import__("os").cpu_count() or 1) + 1
    assert trainable_workers.runtime_env(one) is None


def test_trials_at_once_are_capped_by_the_workers_the_cluster_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    search = SearchConfig(max_concurrent=4, workers_per_trial=2, cpus_per_trial=1.0)
    monkeypatch.setattr(trainable_workers.ray, "cluster_resources", lambda: {"CPU": 3.0})
    assert trainable_workers.max_concurrent(search) == 1  # 2.01 CPUs a trial
    monkeypatch.setattr(trainable_workers.ray, "cluster_resources", lambda: {"CPU": 9.0})
    assert trainable_workers.max_concurrent(search) == 4
    assert trainable_workers.max_concurrent(dataclasses.replace(search, workers_per_trial=1)) == 4


def _cluster(monkeypatch: pytest.MonkeyPatch, nodes: list[dict[str, float]]) -> None:
    total: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0.0) + v
    monkeypatch.setattr(sweep.ray, "cluster_resources", lambda: total)
    monkeypatch.setattr(trainable_workers.ray, "nodes",
                        lambda: [{"Alive": True, "Resources": n} for n in nodes])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize(("search", "nodes", "line"), [
    (SearchConfig(workers_per_trial=3, cpus_per_trial=1.0), [{"CPU": 3.0}],
     "--workers-per-trial 3 × --cpus-per-trial 1 + 0.01 (the trial's own function) = 3.01: "
     "the Ray cluster has 3 CPUs; a trial could never start"),
    (SearchConfig(workers_per_trial=2, cpus_per_trial=2.0), [{"CPU": 1.0}] * 5,
     "--cpus-per-trial 2 per worker: no Ray node has more than 1 CPUs; a worker could never "
     "start"),
    (SearchConfig(cpus_per_trial=4.0), [{"CPU": 3.0}],
     "--cpus-per-trial 4: the Ray cluster has 3 CPUs; a trial could never start"),
])
def test_a_request_the_cluster_cannot_meet_is_one_line_before_any_trial(
        monkeypatch: pytest.MonkeyPatch, search: SearchConfig, nodes: list[dict[str, float]],
        line: str) -> None:
    _cluster(monkeypatch, nodes)
    with pytest.raises(ConfigError) as info:
        sweep.check_resources(search, None)
    assert str(info.value) == line


def test_a_request_that_fits_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, [{"CPU": 3.0}])  # a 2-core machine's local Ray: cores + 1
    sweep.check_resources(SearchConfig(workers_per_trial=2, cpus_per_trial=1.0), None)


def test_a_multi_worker_trials_checkpoint_is_its_train_runs_folder(tmp_path: Path) -> None:
    """TuneReportCallback passes the Train checkpoint's folder as ``checkpoint_path``; the summary
    and the comparison read it as a checkpoint (the best encoder is exported from it)."""
    tune_ckpt = object()
    assert result_checkpoint(SimpleNamespace(checkpoint=tune_ckpt, metrics={})) is tune_ckpt
    got = result_checkpoint(SimpleNamespace(checkpoint=None,
                                            metrics={"checkpoint_path": str(tmp_path)}))
    assert isinstance(got, FolderCheckpoint)
    with got.as_directory() as folder:
        assert folder == str(tmp_path)
    assert result_checkpoint(SimpleNamespace(checkpoint=None, metrics={})) is None


def test_the_reaper_leaves_one_worker_trials_alone() -> None:
    trial = SimpleNamespace(last_result={"epoch": 3.0})
    trainable_workers.PlacementGroupReaper().on_trial_complete(0, [], trial)  # no Ray call


def test_the_worker_hook_silences_only_train_cleaners_thread() -> None:
    before = threading.excepthook
    passed_on: list[str] = []
    try:
        threading.excepthook = lambda args: passed_on.append(str(args.thread.name))
        trainable_workers.quiet_train_cleaner()

        def fail() -> None:
            raise ConnectionError("Found multiple active Ray instances")

        for name in ("PlacementGroupCleanerMonitor", "other"):
            thread = threading.Thread(target=fail, name=name)
            thread.start()
            thread.join()
    finally:
        threading.excepthook = before
    assert passed_on == ["other"]


def test_bench_workers_reports_images_per_second(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m sslsearch.bench workers`` on two worker processes (a handful of steps)."""
    import json

    from sslsearch.bench.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["workers", "--configs", "2x1", "--steps", "2", "--warmup", "1", "--rounds", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())["configs"]["2x1"]
    assert result["images_per_second"] > 0 and result["batch_size"] % 2 == 0
    assert "2 worker(s) × 1 thread(s)" in capsys.readouterr().out
