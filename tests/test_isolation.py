"""The training loop must run with torch alone (it is what runs on a bare GPU machine)."""

import subprocess
import sys


def test_train_imports_no_ray_optuna_mlflow() -> None:
    code = ("import sys, sslsearch.train\n"
            "bad = [m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"sslsearch.train imported {out.stdout.strip()}"


def test_only_the_glue_modules_import_ray_optuna_mlflow() -> None:
    """Ray and Optuna live in the search floor's glue modules (``sslsearch/search/``), named here
    once (docs/design.md points here): the sweep (``search/sweep``; the commands start Ray through
    it), its searchers and stoppers (``search/searchers``, ``search/stopping``), the Tune and
    Train trainables (``search/trainable``, ``search/trainable_workers``), the space and its Optuna
    side (``search/space``, ``search/optuna_space``) and ``search/tracking``; MLflow in
    ``search/tracking`` and, for ``python -m sslsearch.evaluate`` (one run, no Ray),
    ``search/evaluation_runs``. Everything else, the trial floor first, runs with torch alone."""
    import ast
    from pathlib import Path

    import sslsearch

    glue = {"sweep", "searchers", "stopping", "trainable", "trainable_workers", "space",
            "optuna_space", "tracking"}
    allowed = {"ray": {f"search/{m}" for m in glue - {"optuna_space"}},
               "optuna": {f"search/{m}" for m in ("sweep", "searchers", "space", "optuna_space",
                                                  "tracking")},
               "mlflow": {"search/tracking", "search/evaluation_runs"}}
    seen: dict[str, set[str]] = {lib: set() for lib in allowed}
    root = Path(sslsearch.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                lib = name.split(".")[0]
                if lib in allowed:
                    seen[lib].add(path.relative_to(root).with_suffix("").as_posix())
    for lib, modules in seen.items():
        assert modules <= allowed[lib], f"{lib} imported by {sorted(modules - allowed[lib])}"
        assert modules, lib  # the scan works: each library is imported somewhere
