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
import warnings

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
