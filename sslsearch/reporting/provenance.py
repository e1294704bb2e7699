"""What produced a sweep and its answer.

The sweep: the versions of the packages that ran it and the git commit of this package, as tags
of its MLflow parent run. A package this process has imported gives its own ``__version__``
(torch's carries its CUDA build, e.g. ``2.14.1+cu130``); one it has not, its installed
distribution's metadata, so nothing heavy is imported to learn a version.

The answer: where an exported encoder came from (:func:`encoder_provenance`), the ``provenance``
block of its ``config.json`` and the params of its MLflow logged model, named the same in both.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslsearch.data.digest import dataset_of
from sslsearch.results import RAW_VS, baselines_of, number

if TYPE_CHECKING:
    from sslsearch.search.confirm import Choice

PACKAGES = ("torch", "ray", "optuna", "mlflow", "sslsearch")


def sweep_tags() -> dict[str, str]:
    """``version.<package>`` for each of :data:`PACKAGES` (absent when not installed as a
    distribution) and ``mlflow.source.git.commit`` when this package runs from a git checkout."""
    tags = {}
    for name in PACKAGES:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{name}"] = str(loaded or metadata.version(name))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5, check=False).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def encoder_provenance(choice: Choice, sweep_id: str, metric: str) -> dict[str, Any]:
    """Where the encoder of ``choice``'s run came from, for its export's ``provenance``.

    ``accuracy``: the value it was chosen on (``value``: the confirmed mean over fresh seeds when
    ``confirmed``, else the search's value at its seed) and the exported run's own accuracies;
    ``baselines``: that run's split's raw pixels and its encoder at random init; ``dataset``:
    the name, digest and split sizes its result carried (``{}`` for results without them: the
    export then computes them from the data where it can read it). The trial's full
    configuration is the export's ``trial`` block.
    """
    run = choice.run
    measured = {k: v for k in RAW_VS if (v := number(run.metrics.get(k))) is not None}
    return {"method": run.method, "sweep_id": sweep_id, "trial_id": choice.trial_id,
            "run_trial_id": run.trial_id, "seed": run.seed, "selection": choice.how,
            "dataset": dataset_of(run.metrics) or {},
            "accuracy": {"metric": metric, "value": choice.value,
                         "confirmed": run.stage != "search", **measured},
            "baselines": baselines_of(run.metrics)}
