"""Ray Tune glue: a trial's config → :func:`sslsearch.train.run`, each epoch → ``tune.report``.

Every epoch is reported with its checkpoint, so a trial that Ray restarts (a lost node, a resumed
sweep) continues from its last finished epoch; each result names the Ray node that produced it
(``ray_node_id``), so MLflow records where a trial ran, and the data it ran on (name, digest,
split sizes: :func:`sslsearch.data.digest.dataset_result`), its run's Dataset column. A
:class:`~sslsearch.errors.TrialFailure` (non-finite loss, out of memory) ends the trial at once
with a recorded reason instead of an error, so Ray does not retry it: retries are for
infrastructure failures only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from sslsearch import console, train
from sslsearch.data.digest import dataset_result
from sslsearch.errors import TrialFailure
from sslsearch.search.space import trial_from_config
from sslsearch.trial.checkpoint import CHECKPOINT, PREVIOUS
from sslsearch.trial.trial import load_data, select_device

FAILURE_FILE = "failure.json"
NODE_KEY = "ray_node_id"  # the Ray node a result came from (a hex id; hostnames repeat on one host)


def trainable(config: dict[str, Any], metric: str = "val_knn_acc", mode: str = "max") -> None:
    """The function trainable: one pretrain-then-probe trial."""
    # Ray logs every persisted checkpoint at INFO from inside the trial; one line per epoch per
    # trial buries the progress output.
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    console.quiet_worker_teardown()
    cfg = trial_from_config(config)
    where = {NODE_KEY: ray.get_runtime_context().get_node_id()}  # in every result
    work = Path(tempfile.mkdtemp(prefix="sslsearch-ckpt-"))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as folder:
                for name in (CHECKPOINT, PREVIOUS):
                    if (Path(folder) / name).is_file():
                        shutil.copy2(Path(folder) / name, work / name)

        # Loaded here (what train.run would load: the per-process cache), to name it in results.
        data = load_data(cfg, select_device(cfg.device))
        where.update(dataset_result(data))

        def report(metrics: dict[str, float], folder: Path | None) -> None:
            checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder else None
            tune.report({**metrics, **where}, checkpoint=checkpoint)

        try:
            train.run(cfg, report=report, checkpoint_dir=work, data=data)
        except TrialFailure as failure:
            record = {"reason": failure.reason, "message": str(failure)}
            trial_dir = tune.get_context().get_trial_dir()
            if trial_dir:
                (Path(trial_dir) / FAILURE_FILE).write_text(json.dumps(record))
            # A finite worst value (never NaN: a NaN leaves the Optuna trial RUNNING forever and
            # ASHA never stops it); the searcher sees `failure_reason` and records a failed trial.
            tune.report({metric: 0.0 if mode == "max" else float("1e30"),
                         "failure_reason": failure.reason, "failure_message": str(failure),
                         **where})
    finally:
        shutil.rmtree(work, ignore_errors=True)
