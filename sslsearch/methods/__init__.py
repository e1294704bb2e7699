"""The SSL methods: one module per method, the module name is the registry key.

Each module ``sslsearch/methods/<name>.py`` defines a frozen dataclass ``Config`` (the method's
hyperparameters and their defaults) and a class ``Method`` (a subclass of
:class:`sslsearch.methods.base.Method`).
Adding a method means adding that one module: there is no central table to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from functools import cache
from types import ModuleType
from typing import Any

from sslsearch.errors import ConfigError
from sslsearch.schema import build_dataclass

_NOT_METHODS = {"base"}


@cache
def available() -> tuple[str, ...]:
    """The registered method names (the modules of this package that are methods)."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        names.append(info.name)
    return tuple(sorted(names))


def get(name: str) -> ModuleType:
    """The module of method ``name``; an unknown name raises :class:`ConfigError` listing all."""
    if name not in available():
        raise ConfigError(f"method {name!r} is unknown; choose one of: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")


def method_config(name: str, params: Mapping[str, Any] | None = None, *,
                  source: str = "<config>") -> Any:
    """The method's frozen ``Config`` from ``params`` (unknown keys and bad types rejected)."""
    module = get(name)
    cfg = build_dataclass(module.Config, dict(params or {}), source=source,
                          where=f"method_params[{name}]")
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{source}: method_params[{name}]: {exc}") from None
    return cfg


def check_labels_kept(names: Iterable[str], labels: bool, source: str) -> None:
    """Refuse (ConfigError) a supervised method (SupCon) where the labels are hidden
    (``labels: false``): it would train on the very labels the experiment says it has not. Called
    before a sweep or comparison starts (the pre-flight) and by the trial itself."""
    supervised = [n for n in names
                  if n in available() and getattr(get(n).Method, "supervised", False)]
    if supervised and not labels:
        raise ConfigError(f"{source}: labels: false hides the class labels, and "
                          f"{', '.join(supervised)} trains on them (supervised); leave it out "
                          "(--methods for a comparison, the space's method choice for a sweep)")


def uses_labels(config: Mapping[str, Any]) -> bool:
    """Whether a trial's Ray config trains with the class labels (SupCon; Triplet with
    ``use_labels``): a supervised baseline, not a self-supervised method."""
    method = config.get("method")
    if not isinstance(method, str) or method not in available():
        return False
    prefix = f"{method}."
    own = {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}
    base = config.get("_base") or {}
    params = {**(base.get("method_params") or {} if base.get("method") == method else {}), **own}
    return bool(getattr(get(method).Method, "supervised", False) or params.get("use_labels"))
