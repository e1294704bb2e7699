"""What a sweep could not log to MLflow, kept on disk in order, replayed when the server is back.

Sweeps run for days; a tracking server can restart in that time. Every tracking call of a sweep
goes through an :class:`Outbox`: while the server answers, the call goes straight through; when a
call fails because the server is unreachable (:func:`is_outage`), that call and every later one
are appended to a JSON-lines file in the sweep's folder (``tracking_outbox.jsonl``, flushed and
fsynced per record, so a driver crash loses nothing) and training goes on. Every
``retry_after`` seconds the next call first replays the file, in order; when it has all gone
through, the file is deleted and one line says so. A sweep that ends with records still waiting
says how to replay them: ``python -m sslsearch.run --sync-tracking NAME``.

Records name trials by their Ray trial id, never by MLflow run id (a run created during the
outage does not exist yet), and every :class:`sslsearch.search.tracking.Tracker` call they replay is
idempotent: a child run is found by its tag before one is created, metrics at steps the run
already has are skipped, tags and artifacts overwrite. So a replay cut short by a crash can be
run again without duplicating anything.

No mlflow import here: the outbox only knows the tracker's method names (:data:`OPS`). A
locked SQLite store is the other fault it waits out (:class:`RetryingClient`), and a new one is
set up by one process at a time (:func:`store_setup_lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sslsearch.errors import ConfigError

OUTBOX_FILE = "tracking_outbox.jsonl"
# The Tracker methods a record may name: each takes JSON values and is idempotent.
OPS = frozenset({"trial_started", "trial_result", "trial_ended", "trial_tag", "trial_file",
                 "log_parent_text", "log_parent_file", "log_parent_baselines",
                 "log_parent_selection", "log_parent_model", "end_sweep"})
# Failures that mean "the server is not there (now)", not "the call is wrong": connection refused
# or reset, DNS, timeouts, and HTTP 5xx after MLflow's own retries ("Max retries exceeded").
_OUTAGE_TYPES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError",
                 "NewConnectionError", "ProtocolError", "RemoteDisconnected"}
_OUTAGE_TEXT = ("Max retries exceeded", "Connection refused", "Connection aborted",
                "Connection reset", "Failed to establish a new connection", "timed out",
                "Temporary failure in name resolution", "Name or service not known")


def _seconds(text: str | None, default: float) -> float:
    """A number of seconds ≥ 0 from an environment variable; the default if unset or not one."""
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if value >= 0 else default


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the server is unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if type(current).__name__ in _OUTAGE_TYPES:
            return True
        if any(text in str(current) for text in _OUTAGE_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def tolerate(feature: str, call: Callable[[], Any], lacking: set[str],
             say: Callable[[str], None] = print) -> None:
    """``call()`` for a feature an older tracking server may lack (dataset inputs, logged
    models): an outage is raised (the outbox keeps the call), any other error is said once per
    ``feature`` (remembered in ``lacking``) and dropped: a missing extra never stops a sweep."""
    try:
        call()
    except Exception as exc:
        if is_outage(exc):
            raise
        if feature not in lacking:
            lacking.add(feature)
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            say(f"{feature} not logged: {reason}")


class Outbox:
    """Tracking calls to ``connect()``'s tracker, buffered in ``path`` while it is unreachable.

    ``target`` (the tracking URI, MLflow experiment and sweep id) is written as the file's first
    line, so ``--sync-tracking`` needs nothing but the file. ``say`` prints the one-line notices.
    """

    # Seconds between replay attempts while the server is away ($SSLSEARCH_TRACKING_RETRY_S).
    RETRY_AFTER = _seconds(os.environ.get("SSLSEARCH_TRACKING_RETRY_S"), 60.0)

    def __init__(self, path: Path, target: dict[str, str], connect: Callable[[], Any],
                 retry_after: float | None = None, say: Callable[[str], None] = print) -> None:
        self.path = path
        self.target = dict(target)
        self._connect = connect
        self.retry_after = self.RETRY_AFTER if retry_after is None else retry_after
        self._say = say
        self._tracker: Any = None
        self._last_try = -float("inf")
        # The outage line is printed once per outage: not again by a later outbox on the same
        # file (the sweep's report after its callback, a resumed driver).
        self._announced = path.is_file()

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles its callbacks: no live client
        state = self.__dict__.copy()
        state["_tracker"] = None
        return state

    @property
    def pending(self) -> int:
        """Records waiting in the file."""
        return len(_read(self.path)[1]) if self.path.is_file() else 0

    def tracker(self) -> Any:
        if self._tracker is None:
            self._tracker = self._connect()
        return self._tracker

    def runs_link(self) -> str:
        """The sweep's runs link, through the tracker; the experiments list while it is away."""
        from sslsearch.search.tracking_uri import runs_link

        try:
            return str(self.tracker().runs_link())
        except Exception as exc:
            if not is_outage(exc):
                raise
            return runs_link(self.target["uri"])

    def send(self, op: str, *args: Any) -> None:
        """Call ``tracker.op(*args)`` now, or keep it in the file (after anything already
        there, so the server sees the calls in the order they were made)."""
        if op not in OPS:
            raise ValueError(f"outbox: {op!r} is not a tracker call it may replay")
        if (self.path.is_file() and not self.flush(force=False)) or not self._deliver(op, args):
            self._append(op, args)

    def _deliver(self, op: str, args: Any) -> bool:
        """``tracker.op(*args)``; False (and the outage noted) if the server is unreachable,
        any other error raised."""
        try:
            getattr(self.tracker(), op)(*args)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._went_away(exc)
            return False
        return True

    def flush(self, force: bool = True) -> bool:
        """Replay the file in order; True when it is empty (then deleted). Without ``force``
        only once every ``retry_after`` seconds."""
        if not self.path.is_file():
            return True
        if not force and time.monotonic() - self._last_try < self.retry_after:
            return False
        self._last_try = time.monotonic()
        _, records = _read(self.path)
        for done, (op, args) in enumerate(records):
            if not self._deliver(op, args):
                self._rewrite(records[done:])  # what went through is not sent twice
                return False
        self.path.unlink()
        self._say(f"MLflow {self.target.get('uri')} is back: replayed {len(records)} buffered "
                  "tracking records in order")
        self._announced = False
        return True

    def close(self, name: str) -> bool:
        """At the sweep's end: a last replay; if records remain, say how to replay them."""
        if self.flush():
            return True
        self._say(f"MLflow {self.target.get('uri')} still unreachable: {self.pending} tracking "
                  f"records kept in {self.path}; replay them with `python -m sslsearch.run "
                  f"--sync-tracking {name}`")
        return False

    def _went_away(self, exc: BaseException) -> None:
        self._tracker = None  # a fresh client on the next try
        self._last_try = time.monotonic()
        if not self._announced:
            self._announced = True
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self._say(f"MLflow {self.target.get('uri')} unreachable ({reason}); training goes "
                      f"on, tracking records are kept in {self.path} and replayed when it is "
                      "back")

    def _append(self, op: str, args: tuple[Any, ...]) -> None:
        line = json.dumps({"op": op, "args": list(args)}, default=str)
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"outbox": 1, **self.target}) + "\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())  # a driver killed right after still has the record

    def _rewrite(self, records: list[tuple[str, list[Any]]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"outbox": 1, **self.target}) + "\n")
            for op, args in records:
                f.write(json.dumps({"op": op, "args": args}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _read(path: Path) -> tuple[dict[str, str], list[tuple[str, list[Any]]]]:
    """The file's target and records. A last line cut short by a crash mid-write is dropped
    (its call was never acknowledged to anyone); any other bad line is a ConfigError."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if not isinstance(header, dict) or header.get("outbox") != 1:
        raise ConfigError(f"{path}: not an sslsearch tracking outbox (bad first line)")
    records: list[tuple[str, list[Any]]] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ConfigError(f"{path}: line {number} is not JSON") from None
        if (not isinstance(record, dict) or record.get("op") not in OPS
                or not isinstance(record.get("args"), list)):
            raise ConfigError(f"{path}: line {number}: not a tracking record")
        records.append((record["op"], record["args"]))
    return {k: v for k, v in header.items() if k != "outbox"}, records


def read_target(path: Path) -> dict[str, str]:
    """The tracking URI, MLflow experiment and sweep id an outbox file replays to."""
    return _read(path)[0]


class RetryingClient:
    """An ``MlflowClient`` whose calls wait out a locked SQLite store instead of failing.

    Two sweeps (or a sweep and ``mlflow ui``) writing one ``mlflow.db`` take turns at SQLite's
    single writer lock; a call that finds it held past SQLite's own 5 s wait raises "database is
    locked". Such calls are retried with exponential backoff and jitter (0.1 s doubling to 5 s,
    about a minute in all); any other error is raised at once.
    """

    LOCKED = "database is locked"

    def __init__(self, client: Any, attempts: int = 12, first_wait: float = 0.1,
                 max_wait: float = 5.0) -> None:
        self._client = client
        self._attempts, self._first_wait, self._max_wait = attempts, first_wait, max_wait

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not the client's (and unpickling asks before _client exists)
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            wait = self._first_wait
            for attempt in range(self._attempts):
                try:
                    return attr(*args, **kwargs)
                except Exception as exc:
                    if self.LOCKED not in str(exc) or attempt == self._attempts - 1:
                        raise
                    time.sleep(wait * (0.5 + random.random()))
                    wait = min(wait * 2, self._max_wait)
            raise AssertionError("unreachable")

        return call


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """For a SQLite tracking URI, hold an exclusive lock on a file beside the database while
    the block runs (blocking); for any other URI, nothing.

    MLflow creates a SQLite store's tables (and runs its migrations) when the first client opens
    it, and nothing stops two processes doing that at once: two sweeps started together on a new
    ``mlflow.db`` failed with "table _alembic_tmp_experiments already exists", and both would find
    no experiment and create it twice. A client is made, and the experiment found or created,
    under this lock. It is a file of its own: a POSIX lock taken and dropped on the database file
    itself would drop SQLite's own locks on it in this process.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl  # POSIX only, like Ray's multi-node support

    path = Path(uri.removeprefix("sqlite:///"))
    with open(f"{path}.sslsearch-lock", "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
