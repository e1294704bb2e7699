"""The one error type for bad user input.

Every entry point catches :class:`ConfigError`, prints its one-line message and exits with code 2,
so a typo in a YAML file or a flag never ends in a traceback (:func:`exit_code`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class ConfigError(ValueError):
    """Bad user input: one line naming the file/field, the value and what is allowed."""


class OneLineParser(argparse.ArgumentParser):
    """Every command's argument parser: a bad flag (unknown, missing its value, of the wrong type)
    is a :class:`ConfigError`, so, parsed inside :func:`exit_code`, it ends as any bad input does
    (one line, exit 2) instead of argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")


class TrialFailure(RuntimeError):
    """A trial that cannot go on (non-finite loss, out of memory, collapse): not retried.

    ``reason`` is a short machine-readable tag (``nan_loss``, ``oom``, ``collapsed``) recorded in
    the trial's folder and in MLflow.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The reasons that are a configuration's own doing (a learning rate that diverges or collapses
# does so again), so the search learns them as bad outcomes; an out-of-memory depends on the
# machine and on what else runs on it, so it does not count against the configuration.
CONFIG_FAULTS = frozenset({"nan_loss", "collapsed"})


def exit_code(body: Callable[[], int], *, interrupted: str = "interrupted",
              failures: tuple[type[Exception], ...] = ()) -> int:
    """Run a command's ``body`` and turn the ways it can end into exit codes, each with one line
    on stderr: bad input (:class:`ConfigError`) → ``error: …``, 2; a ``failures`` exception (a
    :class:`TrialFailure` reads ``trial failed (reason): …``) → 1; Ctrl+C → ``interrupted``, 130.
    Every entry point goes through here, so none ends in a traceback on input it can name."""
    try:
        return body()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except failures as exc:
        text = (f"trial failed ({exc.reason}): {exc}" if isinstance(exc, TrialFailure)
                else f"error: {exc}")
        print(text, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
