"""Search-space YAML → an Optuna define-by-run function (conditional per method).

The format (one file per method under ``search_spaces/``, plus ``all_methods.yaml``)::

    method: vicreg                       # or {choice: [simclr, vicreg, ...]}
    trial:                               # TrialConfig fields shared by every method
      base_lr: {loguniform: [4.0e-4, 3.0e-3]}
      batch_size: {choice: [64, 128, 256]}
    methods:                             # per method: fields of that method's Config
      vicreg:
        sim_coeff: {uniform: [1, 50]}

Distributions: ``uniform``, ``loguniform``, ``int``, ``logint`` (``[low, high]``), ``choice``
(``[v1, v2, ...]``), ``quantized`` (``[low, high, step]``); a plain value is a constant. A method's
parameters are only suggested when that method is drawn (Optuna's conditional, define-by-run
spaces), and every error names the file, the key path, what was found and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sslsearch import methods
from sslsearch.config import SPACES_DIR, TrialConfig, trial_config
from sslsearch.errors import ConfigError
from sslsearch.schema import check_value, read_yaml, resolve_file

# Dist was defined here until distributions.py: sweeps pickled before resolve it by this name.
from sslsearch.search.distributions import DISTRIBUTIONS, Dist, label, number

TOP_KEYS = ("description", "initial", "method", "methods", "trial")
# Trial fields a space may not set: they are the space's own structure, or per-sweep settings.
_RESERVED = ("method", "method_params")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated space; calling it with an Optuna trial returns the trial's config.

    Picklable (Ray Tune checkpoints the searcher, and this function with it, for resume).
    """

    source: str
    method: Dist | str
    trial: Mapping[str, Dist | Any]
    methods: Mapping[str, Mapping[str, Dist | Any]]
    base: Mapping[str, Any]  # the experiment's trial defaults (TrialConfig as a dict)
    # Points evaluated first, in order (Optuna's enqueue_trial, through OptunaSearch's
    # points_to_evaluate): known-good settings to warm-start from, or a fixed design.
    initial: tuple[Mapping[str, Any], ...] = ()
    # The experiment's per-method settings (Experiment.methods): over ``base`` for that method,
    # under whatever the space draws or fixes. None (a class attribute) for sweeps pickled before.
    per_method: Mapping[str, Mapping[str, Any]] | None = None

    def base_for(self, method: str) -> dict[str, Any]:
        """The experiment's trial defaults for ``method`` (Experiment.trial_for, as a dict)."""
        return {**self.base, **(self.per_method or {}).get(method, {})}

    def dists(self, method: str) -> dict[str, Dist]:
        """The searched (non-constant) parameters of ``method``, keyed as trials name them."""
        out = {k: v for k, v in self.trial.items() if isinstance(v, Dist)}
        out.update({f"{method}.{k}": v for k, v in self.methods.get(method, {}).items()
                    if isinstance(v, Dist)})
        return out

    def drawn_names(self, method: str) -> set[str]:
        """Names of the parameters drawn for ``method`` (``method`` too, when it is a choice):
        what ``initial`` may set."""
        return set(self.dists(method)) | ({"method"} if isinstance(self.method, Dist) else set())

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(self.method.args) if isinstance(self.method, Dist) else (self.method,)

    @property
    def n_dims(self) -> int:
        """How many parameters one trial draws: the largest method's (the method choice
        included). What the number of random start-up trials scales with."""
        return max(len(self.drawn_names(m)) for m in self.method_names)

    def fixed(self, method: str) -> dict[str, Any]:
        """``method``'s Ray config with nothing drawn: the experiment's settings (``_base``) and
        the space's constants. As it is, the experiment's own configuration (the *defaults*);
        drawn values go over it."""
        return {"_base": self.base_for(method), "method": method,
                **{k: v for k, v in self.trial.items() if not isinstance(v, Dist)},
                **{f"{method}.{k}": v for k, v in self.methods.get(method, {}).items()
                   if not isinstance(v, Dist)}}

    def only(self, method: str, *, from_defaults: bool = False) -> SearchSpace:
        """This space with its method fixed to ``method`` (and only that method's initial
        points): one method's search in a comparison or a benchmark. ``from_defaults``: a method
        the space gives no initial point starts from its defaults (``initial: [defaults]``), so
        that its confirmed answer can be what it ships with."""
        one = dataclasses.replace(self, method=method, initial=tuple(
            {k: v for k, v in p.items() if k != "method"} for p in self.initial
            if p.get("method", method) == method))
        if from_defaults and not one.initial:
            one = dataclasses.replace(one, initial=(default_point(one, method),))
        return one

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: suggest the method, the shared parameters, then that method's own.

        Keys: ``method``, TrialConfig field names, and ``<method>.<field>`` for method parameters.
        Every value is returned, drawn ones included: Ray merges the returned dict over the values
        it captured, and for a list-valued choice it captured Optuna's label, not the list.
        """
        def value(spec: Dist | Any, name: str) -> Any:
            return spec.suggest(trial, name) if isinstance(spec, Dist) else spec

        method = value(self.method, "method")
        config: dict[str, Any] = {"_base": self.base_for(method), "method": method}
        for key, spec in self.trial.items():
            config[key] = value(spec, key)
        for key, spec in self.methods.get(method, {}).items():
            config[f"{method}.{key}"] = value(spec, f"{method}.{key}")
        return config


def trial_keys(space: SearchSpace) -> list[str]:
    """Every parameter ``space`` searches, as a trial's config names it (the shared ones, then
    ``method.key`` for each method's): what a trial's record keeps of its config."""
    keys = [k for k, v in space.trial.items() if isinstance(v, Dist)]
    for method, params in space.methods.items():
        keys += [f"{method}.{k}" for k, v in params.items() if isinstance(v, Dist)]
    return keys


def trial_from_config(config: Mapping[str, Any], *, source: str = "<trial>") -> TrialConfig:
    """The :class:`TrialConfig` of a suggested config (the inverse of ``SearchSpace.__call__``)."""
    base = dict(config.get("_base", {}))
    method = config["method"]
    prefix = f"{method}."
    params = dict(base.get("method_params", {})) if base.get("method") == method else {}
    overrides: dict[str, Any] = {"method": method}
    for key, value in config.items():
        if key.startswith("_") or key == "method":
            continue
        if key.startswith(prefix):
            params[key.removeprefix(prefix)] = value
        elif "." not in key:
            overrides[key] = value
    overrides["method_params"] = params
    base.pop("method_params", None)
    base.pop("method", None)
    return trial_config({**base, **overrides}, source=source)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's parameters as logged: the suggested values plus the experiment's settings."""
    cfg = trial_from_config(config)
    flat = {k: v for k, v in vars(cfg).items() if k != "method_params"}
    flat.update({f"method_params.{k}": v for k, v in cfg.method_params.items()})
    flat["supervised"] = methods.uses_labels(config)
    return flat


# ------------------------------------------------------------------------------------------------
# Parsing and validation


def _parse_dist(spec: Mapping[str, Any], src: str, path: str) -> Dist:
    if len(spec) != 1:
        raise ConfigError(f"{src}: {path} must have exactly one distribution key, found "
                          f"{sorted(map(str, spec))}; allowed: {', '.join(DISTRIBUTIONS)}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{src}: {path}: unknown distribution {kind!r}; allowed: "
                          f"{', '.join(DISTRIBUTIONS)}")
    where = f"{src}: {path}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where} must be a non-empty list of values, found {args!r}")
        labels = [label(v) for v in args]
        if len(set(map(repr, labels))) != len(labels):
            raise ConfigError(f"{where} lists a value twice: {args!r}")
        return Dist(kind, tuple(args))
    n = 3 if kind == "quantized" else 2
    shape = "[low, high, step]" if n == 3 else "[low, high]"
    if not isinstance(args, list) or len(args) != n or not all(number(a) for a in args):
        raise ConfigError(f"{where} must be {shape} (numbers), found {args!r}")
    low, high = args[0], args[1]
    if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where} must be integer bounds {shape}, found {args!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}; allowed: low ≤ high")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, found low = {low}")
    if kind == "quantized" and args[2] <= 0:
        raise ConfigError(f"{where}: step must be > 0, found {args[2]}")
    if kind in ("uniform", "loguniform", "quantized"):
        args = [float(a) for a in args]
    return Dist(kind, tuple(args))


def _parse_entry(value: Any, src: str, path: str) -> Dist | Any:
    if isinstance(value, Mapping):
        return _parse_dist(value, src, path)
    return value


def _check_field(cls: type, key: str, spec: Dist | Any, src: str, path: str) -> None:
    """Every value the spec can produce must have the field's type."""
    hint = typing.get_type_hints(cls)[key]
    values = spec.corners() if isinstance(spec, Dist) else [spec]
    if isinstance(spec, Dist) and spec.kind in ("uniform", "loguniform", "quantized"):
        values = [float(v) for v in values]
    for v in values:
        try:
            check_value(v, hint)
        except TypeError:
            what = f"{spec.kind} gives {v!r}" if isinstance(spec, Dist) else f"found {v!r}"
            raise ConfigError(f"{src}: {path} must be {getattr(hint, '__name__', hint)}; "
                              f"{what}") from None


def parse_space(doc: Any, source: str, base: TrialConfig | None = None,
                per_method: Mapping[str, Mapping[str, Any]] | None = None) -> SearchSpace:
    """Validate a parsed YAML document; raise :class:`ConfigError` (one line) on any problem.
    ``base`` and ``per_method``: the experiment's trial and its per-method settings."""
    base = base or TrialConfig()
    if doc is None:
        raise ConfigError(f"{source}: the file is empty; expected keys: method, trial, methods")
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: expected a mapping with keys method, trial, methods; "
                          f"found {type(doc).__name__}")
    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown key {key!s}; valid keys: {', '.join(TOP_KEYS)}")
    if "method" not in doc:
        raise ConfigError(f"{source}: missing key method (a method name or "
                          f"{{choice: [...]}} of: {', '.join(methods.available())})")
    method = _parse_entry(doc["method"], source, "method")
    names = method.args if isinstance(method, Dist) else (method,)
    if isinstance(method, Dist) and method.kind != "choice":
        raise ConfigError(f"{source}: method must be a name or {{choice: [...]}}, "
                          f"found {method.kind}")
    for name in names:
        if not isinstance(name, str) or name not in methods.available():
            raise ConfigError(f"{source}: method {name!r} is unknown; choose from: "
                              f"{', '.join(methods.available())}")

    trial_doc = doc.get("trial") or {}
    if not isinstance(trial_doc, Mapping):
        raise ConfigError(f"{source}: trial must be a mapping of TrialConfig fields")
    fields = {f.name for f in dataclasses.fields(TrialConfig)} - set(_RESERVED)
    trial: dict[str, Any] = {}
    for key, value in trial_doc.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key trial.{key!s}; valid keys: "
                              f"{', '.join(sorted(fields))}")
        trial[key] = _parse_entry(value, source, f"trial.{key}")
        _check_field(TrialConfig, key, trial[key], source, f"trial.{key}")

    methods_doc = doc.get("methods") or {}
    if not isinstance(methods_doc, Mapping):
        raise ConfigError(f"{source}: methods must map method names to their parameters")
    params_of: dict[str, dict[str, Any]] = {}
    for name, params in methods_doc.items():
        if name not in names:
            raise ConfigError(f"{source}: methods.{name!s} is not a method this space draws; "
                              f"allowed: {', '.join(names)}")
        params = params or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{source}: methods.{name} must map parameter names to values")
        cfg_cls = methods.get(name).Config
        valid = {f.name for f in dataclasses.fields(cfg_cls)}
        params_of[name] = {}
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"{source}: unknown key methods.{name}.{key!s}; valid keys: "
                                  f"{', '.join(sorted(valid))}")
            spec = _parse_entry(value, source, f"methods.{name}.{key}")
            _check_field(cfg_cls, key, spec, source, f"methods.{name}.{key}")
            params_of[name][key] = spec

    raw_initial = _parse_initial(doc.get("initial"), source, method, names)
    space = SearchSpace(source, method, trial, params_of, dataclasses.asdict(base),
                        per_method=dict(per_method or {}))
    _check_values(space)
    for i, point in enumerate(raw_initial):
        if isinstance(point, str):
            continue  # DEFAULTS, built from the experiment below: valid by construction
        name = point.get("method", names[0])
        allowed = space.drawn_names(name)
        for key in point:
            if key not in allowed:
                raise ConfigError(f"{source}: initial[{i}].{key!s} is not a parameter this space "
                                  f"draws for {name}; allowed: {', '.join(sorted(allowed))}")
        trial_from_config({**space.fixed(name), **point}, source=f"{source}: initial[{i}]")
    initial: list[Mapping[str, Any]] = []
    for point in raw_initial:
        initial += ([default_point(space, m) for m in space.method_names]
                    if isinstance(point, str) else [point])
    return dataclasses.replace(space, initial=tuple(initial))


# In ``initial:``, the hand-picked configuration: the experiment's settings (default_point).
DEFAULTS = "defaults"


def default_point(space: SearchSpace, method: str) -> dict[str, Any]:
    """``method``'s default configuration as a point to evaluate first: the value the experiment
    (``space.base``) gives each trial field the space draws, and the experiment's or the method's
    own default for each method parameter; choices by their label, as Optuna records them.

    A value the space cannot draw (outside its range, or not among its choices) is left out, so
    TPE draws that parameter instead: an enqueued value outside the distribution would be a point
    the space itself excludes.
    """
    base = space.base_for(method)
    params = dict(base.get("method_params") or {}) if base.get("method") == method else {}
    defaults = methods.get(method).Config()
    own = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    point: dict[str, Any] = {"method": method} if isinstance(space.method, Dist) else {}
    for key, dist in space.dists(method).items():
        if key.startswith(f"{method}."):
            field = key.removeprefix(f"{method}.")
            value = params.get(field, own[field])
        else:
            value = base[key]
        if isinstance(value, tuple):  # a dataclass default (2048, 2048): YAML's choices are lists
            value = list(value)
        if dist.contains(value):
            point[key] = label(value) if dist.kind == "choice" else value
    return point


def _parse_initial(doc: Any, source: str, method: Dist | str,
                   names: tuple[Any, ...]) -> tuple[Mapping[str, Any] | str, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list) or not all(isinstance(p, Mapping) or p == DEFAULTS for p in doc):
        raise ConfigError(f"{source}: initial must be a list of mappings of parameter names "
                          f"to values, or {DEFAULTS} (the experiment's own settings)")
    for i, point in enumerate(doc):
        if isinstance(point, str):
            continue
        if "method" in point and point["method"] not in names:
            raise ConfigError(f"{source}: initial[{i}].method = {point['method']!r}; allowed: "
                              f"{', '.join(map(str, names))}")
    return tuple(p if p == DEFAULTS else dict(p) for p in doc)


def _check_values(space: SearchSpace) -> None:
    """Build a trial config at every bound of every parameter: range errors surface now."""
    for name in space.method_names:
        probes: list[dict[str, Any]] = [{}]
        for key, spec in space.trial.items():
            if isinstance(spec, Dist):
                probes += [{key: v} for v in spec.corners()]
        for key, spec in space.methods.get(name, {}).items():
            if isinstance(spec, Dist):
                probes += [{f"{name}.{key}": v} for v in spec.corners()]
        for probe in probes:
            trial_from_config({**space.fixed(name), **probe}, source=space.source)


def load_space(name: str | Path, base: TrialConfig | None = None,
               per_method: Mapping[str, Mapping[str, Any]] | None = None) -> SearchSpace:
    """Load a space YAML: a path, or a bare name under ``search_spaces/``."""
    path = resolve_file(name, SPACES_DIR, "space")
    return parse_space(read_yaml(path), str(path), base, per_method)
