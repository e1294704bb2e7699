"""One distribution of a search space (:class:`Dist`): how it draws from an Optuna trial and
which values it can draw. Parsed from YAML by :mod:`sslsearch.search.space`; imports no Optuna (its
``optuna.distributions`` twin is :func:`sslsearch.search.optuna_space.optuna_distribution`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice", "quantized")


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def label(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


@dataclasses.dataclass(frozen=True)
class Dist:
    """One distribution: ``kind`` in DISTRIBUTIONS, ``args`` its validated arguments."""

    kind: str
    args: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw from an ``optuna.Trial`` (or Ray's captor of one)."""
        if self.kind == "uniform":
            return trial.suggest_float(name, self.args[0], self.args[1])
        if self.kind == "loguniform":
            return trial.suggest_float(name, self.args[0], self.args[1], log=True)
        if self.kind == "int":
            return trial.suggest_int(name, self.args[0], self.args[1])
        if self.kind == "logint":
            return trial.suggest_int(name, self.args[0], self.args[1], log=True)
        if self.kind == "quantized":
            return trial.suggest_float(name, self.args[0], self.args[1], step=self.args[2])
        # choice: Optuna's categorical takes scalars only, so list values (e.g. layer widths) are
        # drawn by their printed form and mapped back.
        labels = [label(v) for v in self.args]
        picked = trial.suggest_categorical(name, labels)
        return self.args[labels.index(picked)]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can draw (a choice's value, or within the
        bounds; on the grid for ``quantized``, an integer for ``int``/``logint``)."""
        if self.kind == "choice":
            return any(label(value) == label(v) for v in self.args)
        if not number(value):
            return False
        low, high = self.args[0], self.args[1]
        if self.kind in ("int", "logint") and not isinstance(value, int):
            return False
        if self.kind == "quantized":
            steps = (value - low) / self.args[2]
            if abs(steps - round(steps)) > 1e-9:
                return False
        return bool(low <= value <= high)

    def corners(self) -> list[Any]:
        """Values that must all be valid for the field: the bounds, or every choice."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "quantized":
            low, high, step = self.args
            return [low, low + math.floor((high - low) / step + 1e-9) * step]
        return [self.args[0], self.args[1]]
