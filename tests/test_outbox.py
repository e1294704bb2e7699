"""A tracking server that goes away: the outbox keeps every call on disk, in order, and replays it.

The fast tests drive :class:`sslsearch.search.outbox.Outbox` against a fake tracker and a whole
sweep against an MLflow client that raises the error MLflow raises when its server is down; the slow
one stops and restarts a real ``mlflow server`` under a running sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sslsearch.errors import ConfigError
from sslsearch.search.outbox import OPS, OUTBOX_FILE, Outbox, is_outage
from sslsearch.search.tracking import Tracker
from tests.test_sweep import assert_complete_sweep, runs

# What MlflowClient raises when nothing listens at the server's port (MLflow 3, after its retries).
DOWN = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
        "/api/2.0/mlflow/runs/log-batch (Caused by NewConnectionError('Failed to establish a new "
        "connection: [Errno 111] Connection refused'))")


def test_outage_errors_are_told_from_wrong_calls() -> None:
    assert is_outage(MlflowException(DOWN))
    assert is_outage(ConnectionRefusedError(111, "Connection refused"))
    try:
        try:
            raise TimeoutError("read")
        except TimeoutError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_outage(outer)
    assert not is_outage(MlflowException("INVALID_PARAMETER_VALUE: Changing param values is not "
                                         "allowed"))
    assert not is_outage(ValueError("bad metric"))


class Server:
    """A fake tracking server: the calls it received, in order, and a switch."""

    def __init__(self) -> None:
        self.up = True
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_after: int | None = None  # go down after this many more calls

    def connect(self) -> Any:
        if not self.up:
            raise MlflowException(DOWN)
        return FakeTracker(self)


class FakeTracker:
    def __init__(self, server: Server) -> None:
        self.server = server

    def _call(self, op: str, args: tuple[Any, ...]) -> None:
        server = self.server
        if server.fail_after is not None:
            if server.fail_after == 0:
                server.up, server.fail_after = False, None
            else:
                server.fail_after -= 1
        if not server.up:
            raise MlflowException(DOWN)
        server.calls.append((op, args))

    def trial_result(self, *args: Any) -> None:
        self._call("trial_result", args)

    def end_sweep(self, *args: Any) -> None:
        self._call("end_sweep", args)


def _outbox(path: Path, server: Server, said: list[str], retry_after: float = 0.0) -> Outbox:
    return Outbox(path, {"uri": "http://fake", "experiment": "e", "sweep_id": "s"},
                  server.connect, retry_after=retry_after, say=said.append)


def test_calls_made_while_the_server_is_down_reach_it_in_order_after_a_driver_crash(
        tmp_path: Path) -> None:
    path, server, said = tmp_path / OUTBOX_FILE, Server(), []
    box = _outbox(path, server, said, retry_after=3600)
    box.send("trial_result", "t1", "n", {}, {"val_knn_acc": 0.1}, 1)
    server.up = False
    for step in (2, 3):
        box.send("trial_result", "t1", "n", {}, {"val_knn_acc": 0.1 * step}, step)
    assert box.pending == 2 and len(said) == 1 and "unreachable" in said[0]
    server.up = True
    box.send("trial_result", "t1", "n", {}, {"val_knn_acc": 0.4}, 4)  # not retried before 1 h
    assert len(server.calls) == 1 and box.pending == 3
    # The driver dies; a resumed one opens the same file and replays it before anything new.
    del box
    again = _outbox(path, server, said, retry_after=3600)
    again.send("end_sweep", {}, 4, "FINISHED")
    assert [args[-1] if op == "trial_result" else op for op, args in server.calls] == [
        1, 2, 3, 4, "end_sweep"]
    assert not path.exists() and "replayed 3 buffered tracking records in order" in said[-1]


def test_a_replay_cut_short_resends_only_what_did_not_go_through(tmp_path: Path) -> None:
    path, server, said = tmp_path / OUTBOX_FILE, Server(), []
    box = _outbox(path, server, said)
    server.up = False
    for step in range(1, 6):
        box.send("trial_result", "t1", "n", {}, {}, step)
    server.up, server.fail_after = True, 2  # back for two calls, then away again
    assert not box.flush()
    assert [args[-1] for _, args in server.calls] == [1, 2] and box.pending == 3
    server.up = True
    assert box.close("sweep-x")
    assert [args[-1] for _, args in server.calls] == [1, 2, 3, 4, 5]
    # One outage line (the replay never got all the way through in between), one "back" line.
    assert sum("unreachable" in line for line in said) == 1
    assert sum("is back:" in line for line in said) == 1


def test_a_server_that_never_comes_back_leaves_the_file_and_the_command_to_replay_it(
        tmp_path: Path) -> None:
    path, server, said = tmp_path / OUTBOX_FILE, Server(), []
    box = _outbox(path, server, said)
    server.up = False
    box.send("end_sweep", {}, 3, "FINISHED")
    assert not box.close("sweep-x")
    assert "1 tracking records kept in" in said[-1]
    assert "python -m sslsearch.run --sync-tracking sweep-x" in said[-1]
    header = json.loads(path.read_text().splitlines()[0])
    assert header == {"outbox": 1, "uri": "http://fake", "experiment": "e", "sweep_id": "s"}


def test_a_wrong_call_is_raised_not_buffered(tmp_path: Path) -> None:
    class Refusing:
        def trial_result(self, *args: Any) -> None:
            raise MlflowException("INVALID_PARAMETER_VALUE: bad")

    box = Outbox(tmp_path / OUTBOX_FILE, {"uri": "x"}, Refusing)
    with pytest.raises(MlflowException):
        box.send("trial_result", "t1")
    assert not (tmp_path / OUTBOX_FILE).exists()
    with pytest.raises(ValueError, match="not a tracker call"):
        box.send("delete_experiment", "1")


def test_a_record_cut_short_by_a_crash_is_dropped_and_a_corrupt_one_refused(
        tmp_path: Path) -> None:
    path, server, said = tmp_path / OUTBOX_FILE, Server(), []
    box = _outbox(path, server, said)
    server.up = False
    box.send("trial_result", "t1", "n", {}, {}, 1)
    with open(path, "a") as f:
        f.write('{"op": "trial_res')  # the driver died mid-write
    assert box.pending == 1
    server.up = True
    assert box.flush() and [args[-1] for _, args in server.calls] == [1]
    path.write_text('{"outbox": 1, "uri": "x"}\nnot json\n{"op": "end_sweep", "args": []}\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        box.flush()


# A sweep whose MLflow client fails as a stopped server does while a marker file exists. The
# Progress callback (called after the MLflow callback) flips the marker: the server goes away
# after the 2nd result, comes back after the 4th, and goes away for good after the 6th (the last).
FLAKY = """
import sys
from pathlib import Path
from mlflow.exceptions import MlflowException
import sslsearch.search.outbox as outbox
import sslsearch.search.sweep as sweep
import sslsearch.search.tracking as tracking
from sslsearch.run import main

down = Path(sys.argv[1])
Real = tracking.MlflowClient

class Flaky:
    def __init__(self, *args, **kwargs):
        self._client = Real(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        def call(*args, **kwargs):
            if down.exists():
                raise MlflowException(DOWN_TEXT)
            return attr(*args, **kwargs)
        return call

class Switch(sweep.Progress):
    seen = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        Switch.seen += 1
        if Switch.seen in (2, 6):
            down.write_text("down")
        if Switch.seen == 4:
            down.unlink()
        super().on_trial_result(iteration, trials, trial, result, **info)

tracking.MlflowClient = Flaky
outbox.Outbox.RETRY_AFTER = 0.0
sweep.Progress = Switch
sys.exit(main(sys.argv[2:]))
""".replace("DOWN_TEXT", repr(DOWN))


@pytest.mark.slow  # 25 s alone on 2 cores (227 s once, beside other jobs)
def test_a_sweep_outlives_its_tracking_server_and_replays_everything(tmp_path: Path) -> None:
    """Down, back, down for good: the sweep finishes (exit 0), replays the first outage on its
    own, names the command for the second, and after that command MLflow has every trial once,
    every epoch once, the parent's summary, and nothing left RUNNING."""
    script, marker = tmp_path / "flaky.py", tmp_path / "down.marker"
    script.write_text(FLAKY)
    out = subprocess.run(
        [sys.executable, str(script), str(marker), "--space", "simclr", "--experiment", "quick",
         "--num-samples", "2",
         "--epochs", "3", "--max-concurrent", "1", "--grace-period", "3", "--name", "out",
         "--storage", "results", "--quiet", "--no-confirm"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert text.count("unreachable (") == 2, text[-3000:]  # one line per outage
    assert "is back: replayed" in text
    assert "--sync-tracking out`" in text
    outbox_file = tmp_path / "results" / "out" / OUTBOX_FILE
    assert outbox_file.is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, _ = runs(uri)
    assert parents[0].info.status == "RUNNING"  # its end is still in the outbox

    marker.unlink()
    from sslsearch.run import main

    assert main(["--sync-tracking", "out", "--storage", "results"]) == 0
    assert not outbox_file.exists()
    children = assert_complete_sweep(uri, n_trials=2, epochs=3)
    assert all(c.info.status == "FINISHED" for c in children)
    parents, _ = runs(uri)
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(
        parents[0].info.run_id)}
    assert {"summary.md", "best_experiment.yaml"} <= artifacts
    assert main(["--sync-tracking", "out", "--storage", "results"]) == 0  # nothing left: a no-op


def test_sync_tracking_refuses_a_name_outside_the_results_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.run import main

    assert main(["--sync-tracking", "../elsewhere", "--storage", "results"]) == 2
    assert "--sync-tracking '../elsewhere'" in capsys.readouterr().err


def _some_epoch_logged(uri: str) -> bool:
    """Whether a trial's run has a metric yet (False before the sweep's experiment exists)."""
    if MlflowClient(tracking_uri=uri).get_experiment_by_name("sslsearch") is None:
        return False
    return any(c.data.metrics for c in runs(uri)[1])


@pytest.mark.slow
def test_a_real_mlflow_server_stopped_mid_sweep_and_restarted(tmp_path: Path) -> None:
    """``mlflow server`` killed after the first trial's first epoch, restarted 20 s later on the
    same port and database: the sweep trains on, replays, and MLflow ends complete (about 2 min)."""
    from tests.test_sweep import start_mlflow_server

    server, uri = start_mlflow_server(tmp_path)
    env = {**os.environ, "SSLSEARCH_TRACKING_RETRY_S": "2"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "sslsearch.run", "--space", "simclr", "--experiment", "quick",
         "--num-samples", "3",
         "--epochs", "4", "--max-concurrent", "1", "--grace-period", "4", "--name", "real",
         "--storage", "results", "--tracking-uri", uri, "--quiet", "--no-confirm"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not _some_epoch_logged(uri):
            assert time.time() < deadline and sweep.poll() is None
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(20)
        server, _ = start_mlflow_server(tmp_path, port=int(uri.rsplit(":", 1)[1]))
        output, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 0, output[-3000:]
        assert "unreachable (" in output and "is back: replayed" in output, output[-3000:]
        children = assert_complete_sweep(uri, n_trials=3, epochs=4)
        assert all(c.info.status == "FINISHED" for c in children)
        assert not (tmp_path / "results" / "real" / OUTBOX_FILE).exists()
    finally:
        sweep.kill()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_every_op_a_record_may_name_is_a_tracker_method() -> None:
    """A record is replayed as ``getattr(tracker, op)(*args)``: an op the Tracker lacks would fail
    only at replay time, after the outage."""
    assert all(callable(getattr(Tracker, op, None)) for op in OPS)


def test_dataset_inputs_and_the_logged_model_replay_once_and_their_absence_stops_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A replay (a fresh Tracker, the same calls) leaves one dataset input per run and one
    logged model, linked once to the sweep's run; a server without these features (an older
    MLflow) is said once and the sweep goes on, while an outage still reaches the outbox."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    export = tmp_path / "best_encoder"
    export.mkdir()
    (export / "encoder.safetensors").write_bytes(b"\0" * 8)  # the files, not their contents
    (export / "config.json").write_text("{}")
    data = {"name": "digits", "digest": "0123456789abcdef",
            "splits": {"train": 10, "val": 2, "test": 3}}
    for _ in range(2):
        tracker = Tracker(uri, "sslsearch", "sw")
        tracker.trial_result("t1", "simclr-t1", {}, {"val_knn_acc": 0.5}, 1, None, "", data)
        tracker.log_parent_model(str(export), "best_encoder", {"dataset": data})
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(tracker.child("t1", "", {}))
    assert [(d.dataset.name, d.dataset.digest, json.loads(d.dataset.profile))
            for d in child.inputs.dataset_inputs] == [("digits", data["digest"], data["splits"])]
    (model,) = client.search_logged_models([tracker.experiment_id])
    assert model.params == {"dataset.name": "digits", "dataset.digest": data["digest"],
                            "dataset.splits.train": "10", "dataset.splits.val": "2",
                            "dataset.splits.test": "3"}
    outputs = client.get_run(tracker.parent_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model.model_id]

    class Old:  # MLflow 2: no logged models, no dataset inputs
        def __getattr__(self, name: str) -> Any:
            if name in ("search_logged_models", "log_inputs"):
                raise MlflowException(f"API endpoint for {name} not found")
            return getattr(client, name)

    tracker.client, tracker._inputs = Old(), set()
    for _ in range(2):
        tracker.log_parent_model(str(export), "best_encoder", {})
        tracker.trial_result("t1", "simclr-t1", {}, {"val_knn_acc": 0.6}, 2, None, "", data)
    said = capsys.readouterr().out
    assert said.count("logged models not logged") == 1 and said.count("inputs not logged") == 1

    class Down:
        def __getattr__(self, name: str) -> Any:
            raise MlflowException(DOWN)

    tracker.client = Down()
    with pytest.raises(MlflowException):
        tracker.log_parent_model(str(export), "best_encoder", {})
