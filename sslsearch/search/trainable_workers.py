"""Ray glue for a trial on several workers (``--workers-per-trial N``, N > 1): Ray Train inside a
Tune trial, in the pattern Ray documents for Train v2.

The Tune trial's function (:func:`trainable`) builds a ``TorchTrainer`` with N workers (gloo on
the CPU, NCCL on GPUs), a ``RunConfig`` named after the Tune trial id with ``TuneReportCallback``,
and calls ``fit()``; each worker (:func:`worker_loop`) runs :func:`sslsearch.train.run` on its
shard of every global batch (:mod:`sslsearch.parts.distributed`) and calls ``ray.train.report``
after every epoch, rank 0's metrics and checkpoint being the ones Tune sees. So, as for one-worker
trials:

- each epoch reaches Tune once, with an explicit ``epoch`` (ASHA's time attribute; Train v2
  reports no ``training_iteration`` of its own), and MLflow logs it once, from the driver's
  callback, whatever N;
- a killed or restarted trial resumes at its last epoch: the Train run's checkpoints live under
  ``<sweep>/train_runs/<trial id>`` and a Train run of the same name restores them;
- a :class:`~sslsearch.errors.TrialFailure` (a non-finite loss, ``max_host_memory_gb``, out of
  memory while rank 0 evaluates) is raised on every worker together and ends the trial with its
  reason, not an error; the collapse stopper and ASHA stop it from Tune, as any trial.

Resources (Ray's are logical): each worker reserves ``--cpus-per-trial`` CPUs and
``--gpus-per-trial`` GPUs, so a trial holds N times them; the trial's own function asks
:data:`DRIVER_CPU` (it sleeps in ``fit()``; Tune refuses 0). A local Ray started for such a sweep
advertises one logical CPU beyond the machine's cores (:func:`local_cpus`): that CPU holds the
drivers, so on 2 cores a trial's 2 workers get both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from sslsearch import train
from sslsearch.config import SearchConfig
from sslsearch.data.digest import dataset_result
from sslsearch.errors import TrialFailure
from sslsearch.parts.distributed import TorchProcessGroup
from sslsearch.results import CHECKPOINT_PATH_KEY
from sslsearch.search.space import trial_from_config
from sslsearch.search.trainable import FAILURE_FILE, NODE_KEY
from sslsearch.trial.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint
from sslsearch.trial.trial import load_data, select_device

DRIVER_CPU = 0.01  # the Tune trial's function: it waits in fit() while its workers compute
TRAIN_RUNS = "train_runs"  # under the sweep's folder: one Ray Train run per trial, by trial id
WORKER_NODES_KEY = "ray_worker_node_ids"  # the Ray nodes of the trial's workers, by rank
PLACEMENT_GROUP_KEY = "ray_train_placement_group"  # the workers' placement group (hex id)


def trainable(config: dict[str, Any], metric: str = "val_knn_acc", mode: str = "max", *,
              workers: int, cpus: float, gpus: float, storage: str) -> None:
    """The Tune function trainable of a trial on ``workers`` workers (each ``cpus`` CPUs and
    ``gpus`` GPUs); the Train run is ``storage/<trial id>``."""
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config, "metric": metric, "mode": mode,
                           "trial_dir": tune.get_context().get_trial_dir()},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        # mypy reads ray.train.RunConfig as Train v1's (ray.air.config): at run time it is v2's,
        # which takes logging_config and Train's UserCallbacks.
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=tune.get_context().get_trial_id(), storage_path=storage,
            callbacks=[TuneReportCallback()],  # type: ignore[no-untyped-call,list-item]
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train's INFO lines (a line per report per worker) would bury the progress lines.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            # Tune's FailureConfig retries the whole trial (which resumes from here): one
            # policy, not two nested ones.
            failure_config=ray.train.FailureConfig(max_failures=0)))
    trainer.fit()


def worker_loop(loop: dict[str, Any]) -> None:
    """One worker of the trial: :func:`sslsearch.train.run` on its shard, reporting every epoch
    (every worker calls ``ray.train.report``; rank 0 passes the checkpoint)."""
    # Train v2 names some loggers by file path (a line per report per worker at INFO), which its
    # LoggingConfig does not reach.
    for name in ["ray.train", "ray.tune", *(n for n in logging.root.manager.loggerDict
                                           if "/ray/train/" in n)]:
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = trial_from_config(loop["config"])
    if cfg.device != "cpu" and torch.cuda.is_available():  # GPUs asked: this worker's own
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
        cfg = dataclasses.replace(cfg, device=str(device))
    group = TorchProcessGroup()
    nodes = group.all_gather_strings(ray.get_runtime_context().get_node_id())
    pg = ray.util.get_current_placement_group()
    where = {NODE_KEY: nodes[0], WORKER_NODES_KEY: ",".join(nodes),
             PLACEMENT_GROUP_KEY: pg.id.hex() if pg is not None else ""}
    # Loaded here (what train.run would load: the per-process cache), to name it in the
    # results: rank 0's are the trial's (sslsearch.data.digest).
    data = load_data(cfg, select_device(cfg.device))
    if group.is_main:
        where.update(dataset_result(data))
    work = Path(tempfile.mkdtemp(prefix="sslsearch-ckpt-"))
    try:
        restored = ray.train.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                for name in (CHECKPOINT, PREVIOUS):
                    if (Path(folder) / name).is_file():
                        shutil.copy2(Path(folder) / name, work / name)
            _report_restored(work, {**where, CHECKPOINT_PATH_KEY: restored.path})

        def report(metrics: dict[str, float], folder: Path | None) -> None:
            checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
            ray.train.report({**metrics, **where}, checkpoint=checkpoint)

        try:
            train.run(cfg, report=report, checkpoint_dir=work, group=group, data=data)
        except TrialFailure as failure:  # raised on every worker together (train.run)
            if group.is_main and loop.get("trial_dir"):  # the trial's folder, as for one worker
                record = {"reason": failure.reason, "message": str(failure)}
                (Path(loop["trial_dir"]) / FAILURE_FILE).write_text(json.dumps(record))
            worst = 0.0 if loop["mode"] == "max" else 1e30  # finite: a NaN stalls the search
            ray.train.report({loop["metric"]: worst, "failure_reason": failure.reason,
                              "failure_message": str(failure), **where})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report_restored(folder: Path, extra: dict[str, Any]) -> None:
    """Report again the epoch a resumed trial restarts from. Ray Train resumes from the last
    checkpoint IT persisted, which may be newer than the last result the sweep's driver logged
    (a driver killed in between): re-reported, that epoch reaches MLflow if it had not (the
    callback skips an epoch it has logged) and ends a trial killed after its last epoch."""
    state = load_checkpoint(folder)
    if state is not None and state.get("last_metrics"):
        ray.train.report({**state["last_metrics"], **extra})


class PlacementGroupReaper(tune.Callback):
    """Removes a multi-worker trial's worker placement group when Tune ends the trial.

    Why: Tune ends a trial it stops (ASHA, the collapse stopper, the last epoch) by ending the
    trial's actor, which takes the Train controller and the workers with it, but not their
    placement group: Ray ties a placement group to its creator's job (the sweep's driver), and
    Train's own cleaner asks Ray's state API, which needs the dashboard the sweep turns off (and
    one Ray per machine). Left alone, the group would hold its CPUs until the sweep ends, and the
    next trial's workers would wait for them forever. The group's id comes with every result.
    """

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._reap(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._reap(trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:  # retried: its new Train run has a new group
        self._reap(trial)

    @staticmethod
    def _reap(trial: Any) -> None:
        hex_id = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
        if not isinstance(hex_id, str) or not hex_id:
            return
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        try:  # already removed (the Train run shut down first): nothing to do
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id))))
        except Exception as exc:  # cleanup must never fail the sweep
            logging.getLogger(__name__).debug("placement group %s: %s", hex_id, exc)


def tune_trainable(metric: str, mode: str, workers: int, cpus: float, gpus: float,
                   storage: str) -> Any:
    """:func:`trainable` for Tune, asking it for :data:`DRIVER_CPU` only: the workers' CPUs and
    GPUs are the Train run's own placement group (``storage``: :func:`train_storage`)."""
    fn = tune.with_parameters(trainable, metric=metric, mode=mode, workers=workers, cpus=cpus,
                              gpus=gpus, storage=storage)
    return tune.with_resources(fn, {"cpu": DRIVER_CPU})


def train_storage(sweep_folder: str) -> str:
    """Where the trials' Train runs keep their checkpoints: ``<sweep>/train_runs`` (a path or a
    URI, as ``--storage``)."""
    return f"{sweep_folder.rstrip('/')}/{TRAIN_RUNS}"


def requests(search: SearchConfig) -> list[tuple[str, float, str]]:
    """``(resource, amount, what asks it)`` for one trial: CPUs and GPUs."""
    n, cpus, gpus = search.workers_per_trial, search.cpus_per_trial, search.gpus_per_trial
    if n == 1:
        return [("CPU", cpus, f"--cpus-per-trial {cpus:g}"),
                ("GPU", gpus, f"--gpus-per-trial {gpus:g}")]
    return [("CPU", n * cpus + DRIVER_CPU,
             f"--workers-per-trial {n} × --cpus-per-trial {cpus:g} + {DRIVER_CPU:g} (the "
             f"trial's own function) = {n * cpus + DRIVER_CPU:g}"),
            ("GPU", n * gpus, f"--workers-per-trial {n} × --gpus-per-trial {gpus:g}")]


def refusals(search: SearchConfig) -> list[str]:
    """Why a trial of ``search`` could never start on the Ray cluster, one line each: more CPUs
    or GPUs than the cluster has (a trial on several workers needs them all at once), or a
    worker larger than every node."""
    total = ray.cluster_resources()  # type: ignore[no-untyped-call]
    lines = [f"{asked}: the Ray cluster has {have:g} {kind}s; a trial could never start"
             for kind, need, asked in requests(search)
             if need > (have := float(total.get(kind, 0.0)))]
    line = _per_worker_refusal(search)
    return [*lines, line] if line else lines


def _per_worker_refusal(search: SearchConfig) -> str | None:
    """Why one worker could not be placed on any node of the cluster (its CPUs or GPUs exceed
    every node's), or None."""
    if search.workers_per_trial == 1:
        return None
    nodes = [n.get("Resources", {}) for n in ray.nodes()  # type: ignore[no-untyped-call]
             if n.get("Alive")]
    for kind, need in (("CPU", search.cpus_per_trial), ("GPU", search.gpus_per_trial)):
        largest = max((float(r.get(kind, 0.0)) for r in nodes), default=0.0)
        if need > largest:
            return (f"--{kind.lower()}s-per-trial {need:g} per worker: no Ray node has more than "
                    f"{largest:g} {kind}s; a worker could never start")
    return None


def tune_options(search: SearchConfig) -> dict[str, Any]:
    """``TuneConfig``'s ``max_concurrent_trials`` and ``reuse_actors`` for ``search``: its own for
    one-worker trials. Trials on several workers: at most as many at once as the cluster holds
    the workers of (:func:`max_concurrent`), and a fresh actor each (their data lives in the Train
    workers, not in the actor, and a stopped trial's actor must end for its Train run to end)."""
    if search.workers_per_trial == 1:
        return {"max_concurrent_trials": search.max_concurrent,
                "reuse_actors": search.reuse_actors}
    return {"max_concurrent_trials": max_concurrent(search), "reuse_actors": False}


def callbacks(search: SearchConfig) -> list[tune.Callback]:
    """The sweep's Tune callbacks for ``search``'s trials: the :class:`PlacementGroupReaper` for
    trials on several workers, none otherwise."""
    return [PlacementGroupReaper()] if search.workers_per_trial > 1 else []


def max_concurrent(search: SearchConfig) -> int:
    """``search.max_concurrent`` capped by how many trials' workers the cluster holds at once:
    a trial whose Train run waits for workers times out (Ray Train gives up after 60 s), and
    its driver's CPU share is held meanwhile."""
    if search.workers_per_trial == 1:
        return search.max_concurrent
    total = ray.cluster_resources()  # type: ignore[no-untyped-call]
    fits = search.max_concurrent
    for kind, need, _ in requests(search):
        if need > 0:
            fits = min(fits, math.floor(float(total.get(kind, 0.0)) / need + 1e-9))
    return max(1, fits)


def runtime_env(search: SearchConfig) -> dict[str, Any] | None:
    """The Ray job's runtime environment for a sweep of trials on several workers: every Ray
    worker process runs :func:`quiet_train_cleaner` first; None for one-worker trials."""
    if search.workers_per_trial == 1:
        return None
    return {"worker_process_setup_hook": f"{__name__}.quiet_train_cleaner"}


def quiet_train_cleaner() -> None:
    """A Ray worker setup hook: Ray Train's placement-group cleaner asks Ray's state API whether
    the Train controller lives, which a sweep's Ray cannot answer (no dashboard; and on a machine
    running several Rays, no single one to pick); its monitor thread then dies with a traceback
    in every trial's output. :class:`PlacementGroupReaper` does the cleaner's work, so that one
    thread's death is logged at debug level instead; every other thread's exception as before."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == "PlacementGroupCleanerMonitor":
            logging.getLogger(__name__).debug("Ray Train's cleaner: %s", args.exc_value)
            return
        previous(args)

    threading.excepthook = hook


def local_cpus(search: SearchConfig) -> int | None:
    """The CPUs a local Ray should advertise: for trials on several workers, the machine's cores
    plus one logical CPU for the trials' own functions (:data:`DRIVER_CPU` each, waiting on
    their workers), so they never take a share of a core a worker needs; None (Ray's default,
    the cores) for one-worker trials."""
    if search.workers_per_trial == 1:
        return None
    return (os.cpu_count() or 1) + 1
