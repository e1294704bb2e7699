"""The package's layout rules (issue 16), read from the source with ``ast``:

- no import cycle between the package's modules, counting imports inside function bodies (a cycle
  hidden in a function is still a cycle: neither module can be read, tested or moved alone);
- no private name (``_x``) taken from another module, by ``from m import _x`` or ``m._x``: what a
  module offers others is its public names;
- no module over ``MAX_MODULE_LINES`` lines, and no function over ``MAX_DRIVER_FUNCTION_LINES`` in
  the drivers (the command-line entry points, which should read top to bottom);
- every module on one of the ``FLOORS`` (issue 32), none importing a floor above its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import sslsearch

ROOT = Path(sslsearch.__file__).parent
PACKAGE = "sslsearch"
MAX_MODULE_LINES = 400
MAX_DRIVER_FUNCTION_LINES = 60
# The modules that users run (python -m ...) and the functions they call to parse and dispatch.
DRIVERS = ("run", "compare", "cli", "train", "all_methods", "evaluate", "sizes",
           "bench.__main__", "bench.search", "bench.search_cli", "bench.selection",
           "bench.preflight", "bench.workers",
           # the trial loop, which a reader follows step by step too
           "trial.trial", "trial.checkpoint", "trial.evaluation")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((PACKAGE, *parts))] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE):
                    aliases[a.asname or a.name] = a.name
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if not source.startswith(PACKAGE):
                continue
            for a in node.names:
                if f"{source}.{a.name}" in MODULES:  # a submodule: an import of that module
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
                    yield f"{source}.{a.name}", None, node.lineno
                else:
                    yield source, a.name, node.lineno
    for node in ast.walk(tree):  # m._x where m names a module of the package
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            yield aliases[node.value.id], node.attr, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            # A package's __init__ re-exporting its own modules is not a dependency of theirs.
            if target in MODULES and target != module and not target.startswith(f"{module}."):
                graph[module].add(target)
    return graph


# The floors, from the ground up (docs/design.md): a module imports its own floor and the floors
# below it, never one above. Every module of the package is on exactly one floor; a new module
# must be given one here (and in docs/design.md), so the plan cannot rot unseen.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The ground floor: light, no torch. `methods` is the methods' registry (its __init__), which
    # imports this floor alone; it loads a method's module by name when asked (config reads it).
    ("ground", ("", "moved", "config", "schema", "paths", "results", "errors", "console",
                "methods")),
    ("parts", ("parts", "parts.*")),
    ("methods and data", ("methods.*", "data", "data.*")),
    # The trial and its loop: `train` stays at the top of the package for `python -m
    # sslsearch.train`, and the search floor's trainables call its `run`.
    ("trial", ("trial", "trial.*", "train")),
    ("search", ("search", "search.*")),
    ("reporting", ("reporting", "reporting.*")),
    ("commands", ("run", "cli", "compare", "all_methods", "evaluate", "sizes", "bench",
                  "bench.*")),
)


def _floor(module: str) -> int:
    """The floor (its index in FLOORS) of ``module``: ``x`` names a module (or a package's
    __init__), ``x.*`` the modules under package ``x``."""
    name = module.removeprefix(PACKAGE).removeprefix(".")
    found = [i for i, (_, patterns) in enumerate(FLOORS) for pattern in patterns
             if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1]))]
    assert len(found) == 1, f"{module} is on {len(found)} floors: give it one in FLOORS"
    return found[0]


def test_every_module_is_on_one_floor() -> None:
    for module in MODULES:
        _floor(module)


def test_no_module_imports_a_floor_above_its_own() -> None:
    """The import direction: ground ← parts ← methods, data ← trial ← search ← reporting ←
    commands. A module of the trial floor importing the search, or the search a report, fails."""
    upward = [f"{module} ({FLOORS[_floor(module)][0]}) imports {target} "
              f"({FLOORS[_floor(target)][0]})"
              for module, targets in _graph().items() for target in sorted(targets)
              if _floor(target) > _floor(module)]
    assert not upward, "imports of a floor above:\n" + "\n".join(upward)


def test_the_floors_go_up_in_the_documented_order() -> None:
    assert _floor("sslsearch.trial.trial") < _floor("sslsearch.search.sweep")
    assert _floor("sslsearch.config") < _floor("sslsearch.parts.networks")
    assert _floor("sslsearch.methods.simclr") > _floor("sslsearch.methods")
    assert _floor("sslsearch.bench.search") > _floor("sslsearch.reporting.summary")


def test_the_scan_sees_the_package() -> None:
    assert {"sslsearch.train", "sslsearch.methods.simclr", "sslsearch.data"} <= set(MODULES)
    assert "sslsearch.config" in _graph()["sslsearch.train"]


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node] if nxt not in path else path)
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_crosses_modules() -> None:
    crossings = []
    for module in MODULES:
        for target, name, line in _imports(module):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                crossings.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: "
                                 f"{target}.{name}")
    assert not crossings, "private names used across modules:\n" + "\n".join(crossings)


def test_no_module_over_the_line_limit() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines()))
            > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_driver_functions_read_top_to_bottom() -> None:
    long = []
    for name in DRIVERS:
        path = MODULES.get(f"{PACKAGE}.{name}")
        assert path is not None, f"DRIVERS names {name}, which is no module: update the list"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_DRIVER_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, (f"driver functions over {MAX_DRIVER_FUNCTION_LINES} lines:\n"
                      + "\n".join(long))


def test_pyproject_ships_every_package_and_the_yaml_files() -> None:
    """The wheel's package list (pyproject's, explicit because two of them are mapped from the
    top-level folders) names every package of sslsearch/ and the shipped YAML folders."""
    import tomllib

    doc = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert set(doc["packages"]) == packages | {"sslsearch.search_spaces", "sslsearch.experiments"}
    assert doc["package-dir"] == {"sslsearch.search_spaces": "search_spaces",
                                  "sslsearch.experiments": "experiments"}


def test_one_owner_for_what_a_remote_storage_is() -> None:
    """Whether ``--storage`` is a URI is ``search.sweepdir.is_remote``'s to say; a second spelling
    of the rule (``"://" in storage``) would drift from it."""
    spelled = [f"{m}:{i}" for m, p in MODULES.items() if m != f"{PACKAGE}.search.sweepdir"
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if '"://" in' in line and "storage" in line]
    assert not spelled, f"use search.sweepdir.is_remote: {spelled}"
