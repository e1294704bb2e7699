"""MLflow tracking — the only module that imports mlflow.

One parent run per sweep, one child run per trial. Child runs are keyed by a ``sslsearch.trial_id``
tag and looked up before one is created, so a resumed sweep never duplicates a run (Ray's own
``MLflowLoggerCallback`` keeps that map in memory and does, after ``Tuner.restore``); runs left
RUNNING by a killed driver are closed when the sweep ends. A child run's dataset input names its
trial's data (name, digest, splits; never the data); the parent's logged model is the sweep's
exported encoder (no pickle): the runs table's Dataset and Models columns.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from sslsearch.results import RAW_KEYS, outcome
from sslsearch.search.confirm import CANDIDATE_KEY, STAGE_KEY
from sslsearch.search.outbox import Outbox, RetryingClient, store_setup_lock, tolerate
from sslsearch.search.tracking_uri import runs_link

PARENT = "parent"
CHILD = "trial"
TAG_ROLE = "sslsearch.role"
TAG_SWEEP = "sslsearch.sweep_id"
TAG_TRIAL = "sslsearch.trial_id"
TAG_NODE = "sslsearch.node_id"  # the Ray node the trial's latest result came from
TAG_NODES = "sslsearch.node_ids"  # every node it ran on, in order (comma-separated)
TAG_STAGE = "sslsearch.stage"  # search, or confirm (a candidate re-run on a fresh seed)
TAG_CANDIDATE = "sslsearch.candidate"  # a confirmation run's candidate: its search rank, defaults
TAG_SEED = "sslsearch.seed"
# Ray's bookkeeping keys are not metrics of the trial.
_SKIP = {"training_iteration", "timestamp", "time_since_restore", "iterations_since_restore",
         "done", "pid", "time_total_s", "time_this_iter_s", "epoch"}


def _params(values: Mapping[str, Any], prefix: str = "") -> list[Param]:
    out = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            out += _params(value, f"{prefix}{key}.")
        else:
            out.append(Param(f"{prefix}{key}", str(value)[:6000]))
    return out


class Tracker:
    """The sweep's parent run and its children, through one ``MlflowClient``."""

    def __init__(self, uri: str, experiment: str, sweep_id: str) -> None:
        # A server that is down should fail a call in seconds (MLflow's defaults wait minutes):
        # the sweep's Outbox then keeps the call and training goes on.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.uri = uri
        self.sweep_id = sweep_id
        with store_setup_lock(uri):  # a new SQLite store's tables and experiment: made once
            self.client: Any = RetryingClient(MlflowClient(tracking_uri=uri))
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (exp.experiment_id if exp is not None
                                  else self.client.create_experiment(experiment))
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._nodes: dict[str, list[str]] = {}
        self._parent_metrics: set[str] | None = None  # metric keys the parent run has
        self._lacking: set[str] = set()  # features this server refused (said once)
        self._inputs: set[str] = set()  # runs whose dataset input is logged
        self.parent_id = self._find_or_create_parent()

    def _search(self, filter_string: str) -> list[Any]:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                             max_results=1000))

    def _find_or_create_parent(self) -> str:
        found = self._search(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and "
                             f"tags.`{TAG_ROLE}` = '{PARENT}'")
        if found:
            run_id: str = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id,
                                     tags={TAG_ROLE: PARENT, TAG_SWEEP: self.sweep_id})
        return str(run.info.run_id)

    # --- parent ---------------------------------------------------------------------------
    def log_sweep(self, params: Mapping[str, Any], tags: Mapping[str, str],
                  texts: Mapping[str, str]) -> None:
        """Params/tags/text artifacts of the sweep (space, experiment, command line, versions)."""
        existing = self.client.get_run(self.parent_id).data.params
        fresh = [p for p in _params(params) if p.key not in existing]
        self.client.log_batch(self.parent_id, params=fresh,
                              tags=[RunTag(k, v) for k, v in tags.items()])
        for name, text in texts.items():
            self.client.log_text(self.parent_id, text, name)

    def log_parent_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def log_parent_text(self, text: str, name: str) -> None:
        self.client.log_text(self.parent_id, text, name)

    def log_parent_baselines(self, metrics: Mapping[str, Any]) -> list[str]:
        """Log the split's raw-pixel baselines (``raw_knn_acc``, ``raw_probe_acc``, ...) from a
        trial's result on the parent run, once: keys the parent already has (from an earlier
        result, or before a resume) are left alone. Returns the keys logged now."""
        wanted = {k: float(v) for k in RAW_KEYS
                  if isinstance(v := metrics.get(k), int | float) and not isinstance(v, bool)
                  and math.isfinite(float(v))}
        if not wanted or (self._parent_metrics is not None
                          and wanted.keys() <= self._parent_metrics):
            return []
        if self._parent_metrics is None:
            self._parent_metrics = set(self.client.get_run(self.parent_id).data.metrics)
        now = int(time.time() * 1000)
        fresh = [Metric(k, v, now, 0) for k, v in wanted.items() if k not in self._parent_metrics]
        if fresh:
            self.client.log_batch(self.parent_id, metrics=fresh)
            self._parent_metrics |= {m.key for m in fresh}
        return [m.key for m in fresh]

    def log_parent_selection(self, tags: Mapping[str, str], metrics: Mapping[str, float]) -> None:
        """The sweep's answer on its run (:func:`sslsearch.search.confirm.parent_record`): which
        trial won and how, the confirmed figures. Idempotent: a replay sets the same values
        again."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id,
                              metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                       if math.isfinite(float(v))],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_parent_model(self, folder: str, name: str, provenance: Mapping[str, Any]) -> None:
        """The encoder export in ``folder`` (safetensors + config.json: loading runs no code) as
        the parent run's logged model ``name``, ``provenance`` its params. Idempotent: this run's
        model of that name is reused, its files uploaded again, linked to the run once."""
        from mlflow.entities import LoggedModelOutput

        def log() -> None:
            run, c = self.parent_id, self.client
            found = list(c.search_logged_models([self.experiment_id], filter_string=(
                f"source_run_id = '{run}' AND name = '{name}'")))
            model = found[0] if found else c.create_logged_model(
                self.experiment_id, name=name, source_run_id=run, tags={TAG_SWEEP: self.sweep_id},
                params={p.key: p.value for p in _params(provenance)}, model_type="sslsearch")
            c.log_model_artifacts(model.model_id, folder)
            c.finalize_logged_model(model.model_id, "READY")
            linked = getattr(c.get_run(run).outputs, "model_outputs", None) or []
            if model.model_id not in {o.model_id for o in linked}:  # a replay links it once
                c.log_outputs(run, [LoggedModelOutput(model.model_id, 0)])
        tolerate(f"MLflow {self.uri}: logged models", log, self._lacking)

    def end_sweep(self, last_results: Mapping[str, Mapping[str, Any]], max_epochs: int,
                  status: str = "FINISHED") -> None:
        """Close the parent and every child still RUNNING.

        A driver killed between a trial's end and its callback leaves that trial's run RUNNING,
        and the resumed sweep does not start the trial again: its outcome comes from Ray's final
        results (``last_results``, keyed by trial id).

        One with no result started between Tune's last save and the kill: the restored sweep
        (and searcher) forgot it and ran its slot again under a new id, as a rule with the same
        configuration. It is closed KILLED (``trial_status: lost``) and soft-deleted (MLflow's
        "deleted" filter still shows it), so the sweep's runs are its trials, each once."""
        for run in self._search(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and "
                                f"tags.`{TAG_ROLE}` = '{CHILD}' and "
                                "attributes.status = 'RUNNING'"):
            trial_id = run.data.tags.get(TAG_TRIAL, "")
            if trial_id in last_results:  # Ray's results carry the trial's config
                run_status, tags = outcome(last_results[trial_id], max_epochs)
                self.finish_child(run.info.run_id, run_status, tags)
            else:
                self._lose(run)
        self.client.set_terminated(self.parent_id, status=status)

    def forget_trials(self) -> int:
        """Close (KILLED, ``lost``) and soft-delete every child run of the sweep: for a sweep
        resumed from nothing (its driver killed before Tune's first save), whose trials all run
        again under new ids. Returns how many there were."""
        runs = self._search(f"tags.`{TAG_SWEEP}` = '{self.sweep_id}' and "
                            f"tags.`{TAG_ROLE}` = '{CHILD}'")
        for run in runs:
            self._lose(run)
        return len(runs)

    def _lose(self, run: Any) -> None:
        self.finish_child(run.info.run_id, "KILLED" if run.info.status == "RUNNING"
                          else run.info.status, {
                              "trial_status": "lost", "failure_reason": "lost", "failure_message":
                              "not in Tune's saved state at the kill; the resumed sweep re-ran "
                              "its slot"})
        self.client.delete_run(run.info.run_id)

    # --- children -------------------------------------------------------------------------
    def child(self, trial_id: str, name: str, params: Mapping[str, Any]) -> str:
        """The child run of ``trial_id``: found by its tag, created (with params) only if absent."""
        if trial_id in self._children:
            return self._children[trial_id]
        found = self._search(f"tags.`{TAG_TRIAL}` = '{trial_id}' and "
                             f"tags.`{TAG_SWEEP}` = '{self.sweep_id}'")
        if found:
            run_id = str(found[0].info.run_id)
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={TAG_ROLE: CHILD, TAG_SWEEP: self.sweep_id, TAG_TRIAL: trial_id,
                      "mlflow.parentRunId": self.parent_id})
            run_id = str(run.info.run_id)
            self.client.log_batch(run_id, params=_params(params))
        self._children[trial_id] = run_id
        # A resumed trial re-runs the epochs after its last persisted checkpoint (bit for bit);
        # their results are already logged, so steps up to the last logged one are skipped.
        history = self.client.get_metric_history(run_id, "val_knn_acc") if found else []
        self._last_step[run_id] = max((m.step for m in history), default=-1)
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        if step <= self._last_step.get(run_id, -1) and "failure_reason" not in metrics:
            return
        self._last_step[run_id] = step
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool)
                 and math.isfinite(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def record_node(self, run_id: str, node_id: str, node_ip: str = "") -> None:
        """Tag the run with the Ray node its result came from; a move to another node (a lost
        node, a resumed sweep) appends to ``sslsearch.node_ids``, kept across driver restarts."""
        if run_id not in self._nodes:
            previous = self.client.get_run(run_id).data.tags.get(TAG_NODES, "")
            self._nodes[run_id] = previous.split(",") if previous else []
        nodes = self._nodes[run_id]
        if nodes and nodes[-1] == node_id:
            return
        nodes.append(node_id)
        tags = {TAG_NODE: node_id, TAG_NODES: ",".join(nodes)[-5000:]}
        if node_ip:
            tags["sslsearch.node_ip"] = node_ip
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def finish_child(self, run_id: str, status: str, tags: Mapping[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def log_child_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_child_file(self, run_id: str, path: str | Path,
                       artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    # --- keyed by Ray trial id: the calls an Outbox records and replays (JSON arguments; each
    # idempotent, since a replay cut short is run again) ------------------------------------
    def trial_started(self, trial_id: str, name: str, params: Mapping[str, Any],
                      config_text: str, tags: Mapping[str, str] | None = None) -> None:
        run_id = self.child(trial_id, name, params)
        self.log_child_text(run_id, config_text, "trial_config.yaml")
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def trial_result(self, trial_id: str, name: str, params: Mapping[str, Any],
                     metrics: Mapping[str, Any], step: int, node_id: str | None = None,
                     node_ip: str = "", dataset: Mapping[str, Any] | None = None) -> None:
        run_id = self.child(trial_id, name, params)
        self.log_metrics(run_id, metrics, step)
        self.log_parent_baselines(metrics)  # the split's, once, on the sweep's run
        if node_id:
            self.record_node(run_id, node_id, node_ip)
        if dataset and run_id not in self._inputs:  # once a run (MLflow keeps one input anyway)
            from mlflow.entities import Dataset, DatasetInput, InputTag

            self._inputs.add(run_id)
            entity = DatasetInput(Dataset(str(dataset["name"]), str(dataset["digest"]),
                                          "sslsearch", json.dumps(dict(dataset)),
                                          profile=json.dumps(dataset.get("splits", {}))),
                                  [InputTag("mlflow.data.context", "train")])
            tolerate(f"MLflow {self.uri}: dataset inputs",
                     lambda: self.client.log_inputs(run_id, [entity]), self._lacking)

    def trial_ended(self, trial_id: str, name: str, params: Mapping[str, Any], status: str,
                    tags: Mapping[str, str]) -> None:
        self.finish_child(self.child(trial_id, name, params), status, tags)

    def trial_tag(self, trial_id: str, key: str, value: str) -> None:
        self.client.set_tag(self.child(trial_id, "", {}), key, value)

    def trial_file(self, trial_id: str, path: str, artifact_path: str | None = None) -> None:
        self.log_child_file(self.child(trial_id, "", {}), path, artifact_path)

    def runs_link(self) -> str:
        return runs_link(self.uri, self.experiment_id)


def sweep_outbox(path: Path, uri: str, experiment: str, sweep_id: str) -> Outbox:
    """The outbox of a sweep's tracking calls (:mod:`sslsearch.search.outbox`), replaying to
    ``Tracker(uri, experiment, sweep_id)``."""
    return Outbox(path, {"uri": uri, "experiment": experiment, "sweep_id": sweep_id},
                  lambda: Tracker(uri, experiment, sweep_id))


class MLflowTrialCallback(Callback):
    """Driver-side Tune callback: a child run per trial, metrics each epoch, status at the end,
    every call through the sweep's :class:`~sslsearch.search.outbox.Outbox` (``outbox``: its file),
    so a tracking server that goes away does not stop the sweep."""

    def __init__(self, uri: str, experiment: str, sweep_id: str, max_epochs: int,
                 outbox: Path) -> None:
        self.uri, self.experiment, self.sweep_id = uri, experiment, sweep_id
        self.max_epochs = max_epochs
        self.outbox_path = outbox
        self._outbox: Outbox | None = None

    @property
    def outbox(self) -> Outbox:
        # Created lazily: Ray pickles its callbacks into the experiment folder (for
        # ``Tuner.restore``), and a live client with a database connection does not pickle.
        if self._outbox is None:
            self._outbox = sweep_outbox(self.outbox_path, self.uri, self.experiment,
                                        self.sweep_id)
        return self._outbox

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_outbox"] = None
        return state

    @staticmethod
    def _who(trial: Trial) -> tuple[str, str, dict[str, str]]:
        """The trial's id, run name and params (as strings: what MLflow stores, and JSON)."""
        from sslsearch.search.space import trial_params

        params = {p.key: p.value for p in _params(trial_params(trial.config))}
        config, method = trial.config, trial.config.get("method")
        name = (f"{method}-{trial.trial_id}" if STAGE_KEY not in config else
                f"{method}-{config[STAGE_KEY]}-{config.get(CANDIDATE_KEY)}-seed{config.get('seed')}")
        return trial.trial_id, name, params

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        import dataclasses

        import yaml

        from sslsearch.search.space import trial_from_config

        cfg = dataclasses.asdict(trial_from_config(trial.config))
        cfg["method_params"] = dict(cfg["method_params"])
        config = trial.config
        tags = {TAG_STAGE: str(config.get(STAGE_KEY, "search"))}
        if CANDIDATE_KEY in config:  # a confirmation run: which candidate, on which seed
            tags |= {TAG_CANDIDATE: str(config[CANDIDATE_KEY]), TAG_SEED: str(config.get("seed"))}
        self.outbox.send("trial_started", *self._who(trial),
                         yaml.safe_dump({"trial": cfg}, sort_keys=False), tags)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics: dict[str, Any] = {
            k: v for k, v in result.items()
            if k == "failure_reason" or (k not in _SKIP and isinstance(v, int | float)
                                         and not isinstance(v, bool) and math.isfinite(v))}
        from sslsearch.data.digest import dataset_of

        node = result.get("ray_node_id")  # set by sslsearch.search.trainable
        self.outbox.send("trial_result", *self._who(trial), metrics, step,
                         node if isinstance(node, str) else None, str(result.get("node_ip", "")),
                         dataset_of(result))  # the data it ran on: sslsearch.data.digest

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        status, tags = outcome(trial.last_result or {}, self.max_epochs, trial.config)
        self.outbox.send("trial_ended", *self._who(trial), status, tags)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        error = ""
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()[-2000:]
        self.outbox.send("trial_ended", *self._who(trial), "FAILED",
                         {"trial_status": "error", "failure_reason": "error",
                          "failure_message": error})

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.outbox.flush()  # a last try; the driver's report closes the outbox
