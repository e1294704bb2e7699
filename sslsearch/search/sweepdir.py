"""A sweep's folder: one driver at a time, and what a driver killed before Tune's first save left.

Two drivers on one sweep (a second ``--resume``, or a second sweep given the same ``--name``,
while the first runs) would both write Tune's state and the same MLflow runs. The first driver
holds an exclusive POSIX lock on ``<sweep>/sslsearch.lock`` (``fcntl.lockf``, which NFS servers
honour too: a cluster's results live there) for as long as it runs, with its pid, host and command
written in the file; a second driver finding the lock held exits 2 naming that process. The
kernel drops the lock when its holder dies, however it dies (SIGKILL included), so the lock file a
dead driver left behind is taken over, and said so.

A driver killed before Tune first saved its state leaves trial folders that no restore will know
(a resume starts over, :func:`sslsearch.search.sweep.has_tune_state`), and MLflow child runs that no
trial will end: :func:`start_over` ends both.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sslsearch.errors import ConfigError

LOCK_FILE = "sslsearch.lock"
# A Tune trial folder's name (sslsearch.search.sweep's trial_dirname_creator): the method, then
# Tune's trial id (8 hex digits from a searcher; 5 and a 5-digit index from a grid).
_TRIAL_DIR = re.compile(r"[a-z][a-z0-9_]*_[0-9a-f]{5,8}(_\d{5})?")
_held: dict[Path, IO[str]] = {}  # the locks this process holds, by sweep folder


def is_remote(storage: str | Path) -> bool:
    """Whether ``--storage`` is a URI (``s3://``, ``gs://``, ...) that Ray's pyarrow filesystem
    writes, rather than a local or mounted folder: the one rule every entry point asks."""
    return "://" in str(storage)


def lock(folder: Path | None, name: str) -> None:
    """Hold the sweep's lock for the rest of this process (or until :func:`release_all`); a
    ConfigError naming the running driver when another process holds it. Nothing for a sweep
    without a local folder (remote storage)."""
    if folder is None:
        return
    folder = folder.resolve()
    if folder in _held:  # POSIX locks are per process: a second open and close would drop it
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held past this function)
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"sweep {name} is already running ({holder}; lock {path}): wait for "
                          "it to end, or stop that process, then --resume") from None
    handle.seek(0)
    previous = handle.read().strip()
    handle.truncate(0)
    command = " ".join(["python", *sys.argv])[:300]
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}, running {command}\n")
    handle.flush()
    _held[folder] = handle
    if previous:
        print(f"sweep {name}: took over the lock left by {previous.split(',')[0]}, which is no "
              "longer running", file=sys.stderr, flush=True)


def release_all() -> None:
    """Give up every lock this process holds, leaving each lock file empty (its holder gone)."""
    while _held:
        _, handle = _held.popitem()
        handle.truncate(0)
        handle.close()


def remove_orphan_trials(folder: Path) -> int:
    """Delete the trial folders in ``folder`` (Tune's: named ``<method>_<trial id>`` by
    :func:`sslsearch.search.sweep.build_tuner`, empty until the trial writes, or holding Tune's
    ``params.json``): for a sweep resumed from nothing, whose trials all run again under new ids,
    so no restore will read them. Links are not followed. Returns how many were removed."""
    orphans = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
               and (_TRIAL_DIR.fullmatch(p.name) or (p / "params.json").is_file())]
    for path in orphans:
        shutil.rmtree(path)
    return len(orphans)


def start_over(folder: Path, name: str, forget_runs: Callable[[], int]) -> None:
    """A sweep resumed from nothing (its driver killed before Tune's first save) starts over:
    the trial folders (:func:`remove_orphan_trials`) and the MLflow child runs of its first start
    (``forget_runs``, which closes them KILLED ``lost`` and soft-deletes them) belong to no trial
    any more."""
    folders = remove_orphan_trials(folder)
    runs = forget_runs()
    if folders or runs:
        print(f"sweep {name}: killed before Tune's first save, so it starts over; ended {runs} "
              f"MLflow trial run{'s' if runs != 1 else ''} and removed {folders} trial "
              f"folder{'s' if folders != 1 else ''} of its first start", flush=True)
