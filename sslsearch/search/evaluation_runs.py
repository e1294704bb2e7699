"""MLflow for ``python -m sslsearch.evaluate``: fetch an encoder from a run, record an evaluation.

Beside :mod:`sslsearch.search.tracking` (the sweep's runs, which imports Ray for its callback)
so that evaluating an encoder loads MLflow alone: an evaluation is one run, not a sweep.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sslsearch.errors import ConfigError
from sslsearch.search.outbox import store_setup_lock

WEIGHTS = "encoder.safetensors"  # what marks an export folder (sslsearch.reporting.export)


def download_run_export(ref: str, tracking_uri: str, dst: Path) -> Path:
    """The export folder among the artifacts of ``runs:/RUN_ID[/PATH]``, downloaded into
    ``dst`` (emptied first): the first folder holding ``encoder.safetensors``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, _, path = ref.removeprefix("runs:/").strip("/").partition("/")
    if not run_id:
        raise ConfigError(f"{ref}: expected runs:/RUN_ID or runs:/RUN_ID/ARTIFACT_PATH")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path or None, dst_path=str(dst),
            tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"{ref}: cannot download its artifacts from {tracking_uri} "
                          f"({' '.join(str(exc).split())[:200]})") from None
    found = sorted(local.rglob(WEIGHTS), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise ConfigError(f"{ref}: no encoder export ({WEIGHTS}) among the run's artifacts")
    return found[0].parent


def _flat(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]
    return out


def log_evaluation(tracking_uri: str, experiment: str, name: str, doc: Mapping[str, Any],
                   folder: Path) -> str:
    """One run named ``name`` in ``experiment``: the encoder, data set, adaptation and protocol
    as params, each row's accuracies as ``<row>.<metric>`` metrics, the folder's files as
    artifacts. Returns the run id."""
    from mlflow.tracking import MlflowClient

    with store_setup_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=name, tags={"sslsearch.role": "evaluation"})
    run_id: str = run.info.run_id
    params = _flat({k: doc[k] for k in ("encoder", "dataset", "adaptation", "protocol")
                    if k in doc})
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for row, metrics in doc.get("rows", {}).items():
        for key, value in metrics.items():
            client.log_metric(run_id, f"{row}.{key}", float(value))
    for path in sorted(folder.glob("evaluation.*")):
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
