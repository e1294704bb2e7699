"""Where a sweep's MLflow records go: the tracking URI, made absolute (every trial chdirs into its
own folder) and checked before any trial starts, and the link to the runs in MLflow's UI. No mlflow
import: the command line checks a URI before anything heavy loads."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from sslsearch.errors import ConfigError


def default_tracking_uri(cwd: Path | None = None) -> str:
    """An absolute sqlite URI in the working directory (each Ray trial chdirs elsewhere)."""
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def normalize_uri(uri: str | None) -> str:
    """Make a user's tracking URI absolute; refuse schemes MLflow 3 will not take as a backend."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return f"sqlite:///{path.expanduser().resolve()}"
    if uri.startswith(("http://", "https://", "databricks")):
        return uri.rstrip("/")
    if "://" not in uri:  # a bare path: a sqlite file there
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return uri
    raise ConfigError(f"--tracking-uri {uri!r}: unsupported scheme; use sqlite:///PATH, "
                      "http(s)://HOST:PORT, or a database URI (postgresql://...)")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial starts, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            if response.status != 200:
                raise ConfigError(f"--tracking-uri {uri}: the server answered HTTP "
                                  f"{response.status} at /health; is it an MLflow server?")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"--tracking-uri {uri}: MLflow server unreachable ({reason}); start it "
                          "with `mlflow server --host 127.0.0.1 --port 5000` or omit the flag "
                          "for a local sqlite file") from None


def runs_link(uri: str, experiment_id: str | None = None) -> str:
    """The runs table in MLflow 3's "Model training" view (the GenAI view hides it); the
    experiments list when the experiment's id is not known (the server unreachable)."""
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    if experiment_id is None:
        return f"{base}/#/experiments"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
