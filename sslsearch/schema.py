"""Building validated frozen dataclasses from YAML and command-line values, with one-line errors.

The bottom of the package (it imports nothing of it but :mod:`sslsearch.errors`): every other
module that turns user input into a dataclass (trial and experiment configs, method configs, the
search block, the bench's options) goes through :func:`build_dataclass`, so unknown keys and wrong
types read the same everywhere: ``FILE: unknown key trial.x; valid keys: ...``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sslsearch.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` (int → float only), or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return check_value(value, arm)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is Any:
        return value
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError
    if origin is tuple:
        if isinstance(value, list | tuple):
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check_value(v, args[0]) for v in value)
            if len(args) == len(value):
                return tuple(check_value(v, a) for v, a in zip(value, args, strict=True))
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def build_dataclass(cls: type[T], values: Mapping[str, Any], *, source: str, where: str = "") -> T:
    """``cls(**values)``; unknown keys and wrong types raise a one-line :class:`ConfigError`.

    ``source`` names the file (or flag) the values came from, ``where`` the key path inside it.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {where or 'the document'} must be a mapping of keys to "
                          f"values, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {prefix}{key!s}; valid keys: "
                              f"{', '.join(sorted(fields))}")
        try:
            kwargs[key] = check_value(value, hints[key])
        except TypeError:
            raise ConfigError(f"{source}: {prefix}{key} must be {_type_name(hints[key])}, "
                              f"found {value!r}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {where or cls.__name__}: {exc}") from None



# A config file is a few kilobytes: a larger one is a mistake or an attack, refused unread.
MAX_YAML_BYTES = 1 << 20


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text`` (plain data, no tags that build objects), refusing aliases
    (``*name``) first: no sslsearch file needs them, and nested aliases let a file of a few
    hundred bytes stand for billions of nodes ("billion laughs"), which any code walking the
    result (the schema checks do) would take forever on. The check only parses events (no
    construction); the files are a few kilobytes, so reading them twice costs nothing."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in sslsearch files",
                event.start_mark)  # type: ignore[arg-type]  # the C and Python Marks alike
    return yaml.safe_load(text)


def read_yaml(path: Path) -> Any:
    """:func:`parse_yaml` of ``path`` with a one-line error for a missing file, one that is not a
    regular file (a FIFO or a device would block or never end), a file over
    :data:`MAX_YAML_BYTES`, or bad YAML."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes; an sslsearch YAML file is at most "
                          f"{MAX_YAML_BYTES} bytes")
    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def resolve_file(name: str | Path, folder: Path, kind: str) -> Path:
    """A path as given, else a bare name (with or without ``.yaml``) looked up in ``folder``."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    if path.exists():  # a folder, a FIFO, a device: refused before anything reads it
        raise ConfigError(f"{kind} file {str(name)!r}: not a regular file")
    for candidate in (folder / str(name), folder / f"{name}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    raise ConfigError(f"{kind} file {str(name)!r} not found (looked in . and {folder}); "
                      f"known: {', '.join(known) or 'none'}")
