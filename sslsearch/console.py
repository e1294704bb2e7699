"""What a driver's console shows: the sweep's own lines, not the libraries' start-up chatter.

Called first by every command that starts Ray, MLflow or Optuna (``run``, ``--compare``, ``bench
search``). Only announcements are silenced, never a setting: Ray's token authentication stays on
(its "Token authentication is enabled" notice goes), MLflow still creates and migrates its store
(its "Creating initial MLflow database tables" INFO lines go). Optuna sets its own logger's level
when first used, so the searcher that creates the study lowers it (``searchers.SSLOptunaSearch``).
Warnings and errors still print.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

# Loggers whose INFO/notice lines say nothing a user acts on, and the level each is raised to.
CHATTY_LOGGERS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # token auth notice
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables..."
    "alembic": logging.WARNING,  # MLflow's schema migrations, one INFO line per step
}


def quiet_libraries() -> None:
    """Raise the chatty loggers' levels, drop deprecation warnings (the libraries' own, about
    their internals) and keep Ray Tune's classic progress output (ours replaces its tables)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name, level in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def quiet_worker_teardown() -> None:
    """In a Ray worker (the trainable calls it): no traceback on the driver's console when Ray's
    SIGTERM at a sweep's end lands inside a garbage-collector callback. Ray's handler raises
    SystemExit wherever the worker is; inside a weakref or ``__del__`` callback Python cannot
    propagate it and prints "Exception ignored in ... SystemExit: 1", which Ray forwards to the
    driver (once in three default sweeps, 2026-12-07). Only that case goes quiet (the exit was
    lost either way): every other exception raised in such a callback prints as before."""
    sys.unraisablehook = _unraisable


def _unraisable(info: Any) -> None:
    if isinstance(info.exc_value, SystemExit):
        return
    sys.__unraisablehook__(info)
