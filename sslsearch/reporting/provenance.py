"""What produced a sweep: the versions of the packages that ran it and the git commit of this
package, as tags of its MLflow parent run. A package this process has imported gives its own
``__version__`` (torch's carries its CUDA build, e.g. ``2.14.1+cu130``); one it has not, its
installed distribution's metadata, so nothing heavy is imported to learn a version."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

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
