"""The sweep: Ray Tune's ``Tuner`` with Optuna's TPE, ASHA, a collapse stopper, retries, resume.

All paths are made absolute before Ray starts (each trial runs in its own working directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from sslsearch.config import Experiment, SearchConfig
from sslsearch.errors import ConfigError
from sslsearch.paths import check_owned
from sslsearch.results import FINISHED, STOPPED_EARLY, trial_status
from sslsearch.search import trainable_workers
from sslsearch.search.confirm import CANDIDATE_KEY, DEFAULTS
from sslsearch.search.outbox import OUTBOX_FILE

# Sweeps saved before searchers.py existed pickled these as sslsearch.sweep.* (an old name that
# sslsearch.moved maps to this module): they resolve here.
from sslsearch.search.searchers import ConfigList, SSLOptunaSearch, n_startup_trials, optuna_sampler
from sslsearch.search.space import SearchSpace
from sslsearch.search.stopping import BudgetStopper, CollapseStopper
from sslsearch.search.sweepdir import is_remote
from sslsearch.search.tracking import MLflowTrialCallback
from sslsearch.search.trainable import trainable

SWEEP_FILE = "sslsearch_sweep.json"


class Progress(tune.Callback):
    """One line per finished epoch and per finished trial, instead of Ray's tables."""

    def __init__(self, metric: str, total: int, per_epoch: bool = True) -> None:
        self.metric, self.total, self.per_epoch = metric, total, per_epoch
        self.done = 0
        self.t0 = time.time()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        if self.per_epoch and "epoch" in result:
            print(f"  [{time.time() - self.t0:6.0f}s] {trial.trial_id} "
                  f"{trial.config.get('method', '?'):>8}{_run_label(trial.config)} "
                  f"epoch {int(result['epoch']):3d}  "
                  f"{self.metric} {result.get(self.metric, float('nan')):.4f}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        self.done += 1
        last = trial.last_result or {}
        status = trial_status(last, trial.config)
        state = {FINISHED: FINISHED, STOPPED_EARLY: f"{STOPPED_EARLY} by ASHA"}.get(
            status, f"ended: {status}")
        print(f"trial {trial.trial_id}{_run_label(trial.config)} {state} ({self.done}/"
              f"{self.total} done)", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self.done += 1
        print(f"trial {trial.trial_id} errored ({self.done}/{self.total} done); "
              f"see {trial.error_file}", flush=True)


def _run_label(config: dict[str, Any]) -> str:
    """`` confirm #1 seed 4`` for a confirmation run, "" for a search trial."""
    label = config.get(CANDIDATE_KEY)
    if label is None:
        return ""
    return f" confirm {label if label == DEFAULTS else f'#{label}'} seed {config.get('seed')}"


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What a sweep needs beyond the experiment and the space; all paths absolute."""

    name: str
    storage: str  # an absolute path or a URI (s3://, gs://, ...)
    tracking_uri: str
    mlflow_experiment: str
    seed: int = 0
    address: str | None = None
    # The tracking outbox's file (sslsearch.search.outbox); None: in the sweep's folder, or in the
    # working directory when the storage is remote.
    outbox: str | None = None

    @property
    def outbox_file(self) -> Path:
        if self.outbox is not None:
            return Path(self.outbox)
        if is_remote(self.storage):
            return Path.cwd().resolve() / f"{self.name}-{OUTBOX_FILE}"
        return Path(self.storage) / self.name / OUTBOX_FILE


def space_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_sweep_id(space_name: str) -> str:
    return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def check_address(address: str, given: str = "--address", timeout: float = 5.0) -> None:
    """Refuse (ConfigError, exit 2) in seconds an address where no Ray cluster answers: Ray itself
    waits minutes for an unreachable head. ``auto`` is the cluster `ray start` recorded on this
    machine; ``HOST:PORT`` a head's GCS, ``ray://HOST:PORT`` a Ray Client server. Only TCP is
    tried (the port accepts a connection), before anything else starts."""
    target = address
    if address == "auto":
        record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not record.is_file():
            raise ConfigError(f"{given} auto: no Ray cluster was started on this machine (no "
                              f"{record}); start one with `ray start --head`, or omit it for a "
                              "local Ray")
        target = record.read_text().strip()
    host, colon, port = target.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{given} {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"{given} {address}: no Ray cluster answers at {host}:{port} "
                          f"({reason} within {timeout:g} s); start it with `ray start --head`, "
                          "or omit it for a local Ray") from None


def init_ray(address: str | None, num_cpus: int | None = None,
             runtime_env: dict[str, Any] | None = None) -> None:
    """Start (or join) Ray with its dashboard off; a local head stays on 127.0.0.1."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Every epoch checkpoints; Tune's "snapshotting too often" warning is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trials print nothing themselves; Ray's own INFO chatter would drown the progress lines.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True, "runtime_env": runtime_env}
    given = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        check_address(address, given)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as exc:  # it answers TCP, but is no Ray head
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(f"{given} {address}: Ray could not join a cluster there ({first}); "
                              "check the head's address and port (`ray status` on the head)"
                              ) from None
    else:
        # "local": a fresh instance. With no address Ray would join whatever `ray start` left in
        # /tmp/ray/ray_current_cluster, and hang for minutes when that cluster is gone.
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)


def start_ray(search: SearchConfig, address: str | None) -> None:
    """:func:`init_ray` sized for ``search``'s trials (a local Ray for trials on several workers
    advertises a logical CPU more than the cores: :mod:`sslsearch.search.trainable_workers`)."""
    init_ray(address, num_cpus=trainable_workers.local_cpus(search),
             runtime_env=trainable_workers.runtime_env(search))


def check_resources(search: SearchConfig, address: str | None) -> None:
    """A trial asking for more CPUs or GPUs than the Ray cluster has would wait forever: refuse
    it now (exit 2), for a local Ray. A cluster given by address may grow (an autoscaler adds
    nodes on demand), so there it is only said."""
    for line in trainable_workers.refusals(search)[:1]:  # a trial's CPUs and GPUs (N workers')
        if address or os.environ.get("RAY_ADDRESS"):
            print(f"warning: {line} unless the cluster grows", file=sys.stderr, flush=True)
        else:
            raise ConfigError(line)


def build_tuner(exp: Experiment, space: SearchSpace, settings: SweepSettings,
                quiet: bool = False, budget_epochs: int | None = None) -> tune.Tuner:
    """The sweep's Tuner; ``budget_epochs`` ends the whole search once its trials have trained
    that many epochs in all (``python -m sslsearch.bench search``'s equal budgets)."""
    search: SearchConfig = exp.search
    fn = _trainable(search.metric, search.mode, search.cpus_per_trial, search.gpus_per_trial,
                    search.workers_per_trial, f"{settings.storage}/{settings.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental by Optuna
        # With a budget, num_samples is only a cap the budget reaches first: the start-up is
        # sized from the budget in whole trials, as `sslsearch.run --num-samples` that many.
        planned = (search.num_samples if budget_epochs is None
                   else max(1, budget_epochs // exp.trial.epochs))
        sampler = optuna_sampler(settings.seed, n_startup_trials(planned, space.n_dims))
        searcher = SSLOptunaSearch(space, metric=search.metric, mode=search.mode, sampler=sampler,
                                   points_to_evaluate=[dict(p) for p in space.initial] or None)
    epochs = exp.trial.epochs
    # "epoch": every trial reports it (Train v2 no training_iteration; trainable_workers)
    scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric,
                              mode=search.mode, max_t=epochs,
                              grace_period=min(search.grace_period, epochs),
                              reduction_factor=search.reduction_factor)
    stop: tune.Stopper | None = None
    if search.stop_on_collapse:
        stop = CollapseStopper(search.collapse_std_ratio, search.collapse_rank_ratio,
                               search.collapse_patience)
    if budget_epochs is not None:
        stop = BudgetStopper(budget_epochs, stop)
    callbacks = [
        MLflowTrialCallback(settings.tracking_uri, settings.mlflow_experiment, settings.name,
                            epochs, settings.outbox_file),
        Progress(search.metric, search.num_samples, per_epoch=not quiet),
        *trainable_workers.callbacks(search),
    ]
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=search.num_samples,
            # One actor runs trial after trial: no 2–4 s actor start-up per trial, and the
            # per-process dataset cache (data.load_dataset_cached) is hit after the first trial.
            # max_concurrent_trials, reuse_actors: the search block's (trials on several workers:
            # trainable_workers.tune_options says why they differ).
            **trainable_workers.tune_options(search),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=settings.storage, stop=stop, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=0),
    )


def _trial_dirname(trial: Trial) -> str:
    # Ray's default folder name repeats every parameter: unreadable, and too long for some FS.
    return f"{trial.config.get('method', 'trial')}_{trial.trial_id}"


def write_sweep_file(folder: Path, info: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, folder / SWEEP_FILE)


def read_sweep_file(folder: Path) -> dict[str, Any]:
    """The sweep record of an experiment folder, refusing folders that are unsafe to restore.

    Ray unpickles the folder's state on restore: a folder another user owns or anyone can write
    to could run their code as us.
    """
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: no such folder")
    record = folder / SWEEP_FILE
    if not record.is_file() or not (folder / "tuner.pkl").is_file():
        raise ConfigError(f"--resume {folder}: holds no sslsearch sweep "
                          f"(no {SWEEP_FILE} / tuner.pkl)")
    for path in (folder, record, folder / "tuner.pkl"):
        check_owned(path, f"--resume {folder}", "unpickle")
    try:
        info: dict[str, Any] = json.loads(record.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"--resume {folder}: {SWEEP_FILE} is corrupt") from None
    return info


def has_tune_state(folder: Path) -> bool:
    """Whether Tune saved the experiment's state in ``folder``. A driver killed after writing
    ``tuner.pkl`` but before Tune's first save leaves none, and ``Tuner.restore`` then runs a new
    experiment with Tune's default of ONE sample (``num_samples`` is not passed on restore; the
    saved search state would carry it): such a sweep must be started over, not restored."""
    return any(folder.glob("experiment_state-*.json"))


def restore_tuner(folder: Path, record: Path | None = None) -> tune.Tuner:
    """Tune's experiment in ``folder``, to continue; ``record``: the folder whose sweep file says
    how its trials were wrapped (default ``folder``; a confirmation's is its sweep's)."""
    info = json.loads(((record or folder) / SWEEP_FILE).read_text())
    fn = _trainable(info["metric"], info["mode"], info["cpus_per_trial"], info["gpus_per_trial"],
                    info.get("workers_per_trial", 1), str(folder))
    return tune.Tuner.restore(str(folder), trainable=fn, resume_unfinished=True,
                              resume_errored=True, restart_errored=False)


def _trainable(metric: str, mode: str, cpus: float, gpus: float, workers: int = 1,
               sweep_folder: str = "") -> Any:
    if workers > 1:  # Ray Train inside the trial (trainable_workers)
        return trainable_workers.tune_trainable(metric, mode, workers, cpus, gpus,
                                                trainable_workers.train_storage(sweep_folder))
    return tune.with_resources(tune.with_parameters(trainable, metric=metric, mode=mode),
                               {"cpu": cpus, "gpu": gpus})


def build_runs_tuner(configs: Sequence[dict[str, Any]], exp: Experiment, storage: str,
                     run_name: str, sweep_name: str, tracking_uri: str, mlflow_experiment: str,
                     quiet: bool, outbox: Path | None = None) -> tune.Tuner:
    """Train each of ``configs`` (full Ray configs, seeds included) once to its last epoch: no
    searcher, no ASHA, no collapse stopper (a confirmation wants every run's end). Logged as
    children of the sweep ``sweep_name`` like any trial (through the tracking outbox ``outbox``,
    by default ``storage/tracking_outbox.jsonl``); Tune's experiment is ``storage/run_name``."""
    search = exp.search
    return tune.Tuner(
        _trainable(search.metric, search.mode, search.cpus_per_trial, search.gpus_per_trial,
                   search.workers_per_trial, f"{storage}/{run_name}"),
        tune_config=tune.TuneConfig(
            search_alg=ConfigList(configs, search.metric, search.mode),
            num_samples=len(configs), **trainable_workers.tune_options(search),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=run_name, storage_path=storage,
            callbacks=[MLflowTrialCallback(tracking_uri, mlflow_experiment, sweep_name,
                                           exp.trial.epochs,
                                           outbox or Path(storage) / OUTBOX_FILE),
                       Progress(search.metric, len(configs), per_epoch=not quiet),
                       *trainable_workers.callbacks(search)],
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0))


def fit_all(tuner: tune.Tuner) -> list[Any]:
    """``tuner.fit()``'s results. Tune returns (not raises) on Ctrl+C, with trials unfinished:
    that must end the command (to be resumed), not carry on with half a search."""
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < len(grid):
        raise KeyboardInterrupt
    return [grid[i] for i in range(len(grid))]


def python_command(argv: Sequence[str]) -> str:
    return " ".join([Path(sys.executable).name, "-m", "sslsearch.run", *argv])
