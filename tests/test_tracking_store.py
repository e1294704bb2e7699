"""Issue 19: concurrent sweeps on one SQLite store wait out its lock instead of failing."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sslsearch.search.outbox import RetryingClient


class _Flaky:
    """A client whose ``log`` finds the store locked ``locked`` times, then works."""

    def __init__(self, locked: int, message: str = "(sqlite3.OperationalError) database is "
                                                    "locked") -> None:
        self.locked, self.message, self.calls = locked, message, 0
        self.tracking_uri = "sqlite:///x.db"

    def log(self, value: int) -> int:
        self.calls += 1
        if self.calls <= self.locked:
            raise MlflowException(self.message)
        return value * 2


def test_a_locked_store_is_retried_with_backoff() -> None:
    flaky = _Flaky(locked=3)
    client = RetryingClient(flaky, first_wait=0.001)
    assert client.log(21) == 42 and flaky.calls == 4
    assert client.tracking_uri == "sqlite:///x.db"  # attributes pass through


def test_other_errors_and_a_lock_that_never_clears_are_raised() -> None:
    other = _Flaky(locked=1, message="RESOURCE_DOES_NOT_EXIST")
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        RetryingClient(other, first_wait=0.001).log(1)
    assert other.calls == 1  # not retried
    stuck = _Flaky(locked=100)
    with pytest.raises(MlflowException, match="database is locked"):
        RetryingClient(stuck, attempts=4, first_wait=0.001).log(1)
    assert stuck.calls == 4


def test_the_client_pickles() -> None:
    client = pickle.loads(pickle.dumps(RetryingClient(_Flaky(0), first_wait=0.001)))
    assert client.log(2) == 4


WRITER = """
import sys
from sslsearch.search.tracking import Tracker
tracker = Tracker(sys.argv[1], "sslsearch", sys.argv[2])
for trial in range(6):
    run_id = tracker.child(f"t{trial}", f"simclr-t{trial}", {"base_lr": 0.001 * trial})
    for epoch in range(1, 6):
        tracker.log_metrics(run_id, {"val_knn_acc": 0.5 + epoch / 100, "train_loss": 1.0 / epoch},
                            epoch)
    tracker.finish_child(run_id, "FINISHED", {"trial_status": "completed"})
tracker.end_sweep({}, 5, "FINISHED")
"""


def test_two_sweeps_write_one_sqlite_store_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("sslsearch")  # schema made once
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, f"sweep-{i}"],
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors: list[Any] = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sslsearch")
    assert exp is not None
    found = client.search_runs([exp.experiment_id], max_results=100)
    assert len(found) == 2 * (6 + 1)  # each sweep: its parent and 6 trials, none lost
    for run in found:
        if run.data.tags.get("sslsearch.role") == "trial":
            history = client.get_metric_history(run.info.run_id, "val_knn_acc")
            assert [m.step for m in history] == [1, 2, 3, 4, 5]
