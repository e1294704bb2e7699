"""The one error type for bad user input.

Every entry point catches :class:`ConfigError`, prints its one-line message and exits with code 2,
so a typo in a YAML file or a flag never ends in a traceback.
"""


class ConfigError(ValueError):
    """Bad user input: one line naming the file/field, the value and what is allowed."""


class TrialFailure(RuntimeError):
    """A trial that cannot go on (non-finite loss, out of memory, collapse): not retried.

    ``reason`` is a short machine-readable tag (``nan_loss``, ``oom``, ``collapsed``) recorded in
    the trial's folder and in MLflow.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
