"""``search_spaces/all_methods.yaml`` is derived from the per-method spaces, never edited by hand.

    python -m sslsearch.all_methods          # rewrite search_spaces/all_methods.yaml
    python -m sslsearch.all_methods --check  # exit 1 if the file differs from the derivation

A method's own file (``search_spaces/<method>.yaml``) is the one owner of its ranges; adding a
method is its module, its space and its tests. The derived space draws the method, then:

- each method's own parameters (``methods.<method>``) exactly as its file gives them;
- the shared trial fields searched by **every** method's file, each as the envelope of the
  methods' ranges: ``[min low, max high]`` of a (log)uniform or (log)int range, the union of a
  choice's values (first-seen order), so no method loses a value its own file searches (SwAV's
  1e-4 learning rate, the pretext tasks' uncropped views). A trial field that only some files
  search (rotation's ``flip_p``) or that the files fix to different constants stays at the
  experiment's value here, and the header says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sslsearch.config import SPACES_DIR
from sslsearch.errors import ConfigError
from sslsearch.schema import read_yaml

NAME = "all_methods.yaml"
RANGES = ("uniform", "loguniform", "int", "logint")


def _envelope(key: str, specs: list[Any]) -> Any:
    """One trial field's union over the methods' files, or None when there is no clean one."""
    if all(s == specs[0] for s in specs):
        return specs[0]
    kinds = {next(iter(s)) if isinstance(s, Mapping) and len(s) == 1 else None for s in specs}
    if len(kinds) != 1 or None in kinds:
        return None
    kind = kinds.pop()
    args = [s[kind] for s in specs]
    if kind in RANGES:
        return {kind: [min(a[0] for a in args), max(a[1] for a in args)]}
    if kind == "choice":
        values: list[Any] = []
        for a in args:
            values += [v for v in a if v not in values]
        return {kind: values}
    return None  # quantized ranges with other steps: no clean union


def derive(folder: Path = SPACES_DIR) -> str:
    """The text of ``all_methods.yaml`` from the per-method files in ``folder``."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == NAME:
            continue
        doc = read_yaml(path)
        method = doc.get("method") if isinstance(doc, Mapping) else None
        if not isinstance(method, str) or path.stem != method:
            raise ConfigError(f"{path}: a per-method space names its method (method: "
                              f"{path.stem}); found {method!r}")
        docs[method] = doc
    trials = {m: d.get("trial") or {} for m, d in docs.items()}
    shared, left_out = {}, []
    for key in dict.fromkeys(k for t in trials.values() for k in t):
        union = (_envelope(key, [t[key] for t in trials.values()])
                 if all(key in t for t in trials.values()) else None)
        if union is None:
            left_out.append(f"{key} ({', '.join(m for m, t in trials.items() if key in t)})")
        else:
            shared[key] = union
    doc = {"method": {"choice": list(docs)}, "trial": shared,
           "methods": {m: d["methods"][m] for m, d in docs.items() if (d.get("methods") or {})
                       .get(m)}}
    header = ["# Derived from search_spaces/<method>.yaml by `python -m sslsearch.all_methods`: do",
              "# not edit (tests/test_space.py checks it). Every method, its parameters exactly as",
              "# its own file gives them; the shared trial fields as the envelope of the files'",
              "# ranges (sslsearch/all_methods.py)."]
    if left_out:
        header.append(f"# At the experiment's value here (not searched by every file alike): "
                      f"{'; '.join(left_out)}.")
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100,
                          allow_unicode=True)
    return "\n".join(header) + "\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sslsearch.all_methods",
                                     description="Derive search_spaces/all_methods.yaml.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from the derivation; write nothing")
    args = parser.parse_args(argv)
    try:
        text = derive()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = SPACES_DIR / NAME
    if args.check:
        same = target.is_file() and target.read_text() == text
        status = "up to date" if same else "differs: run python -m sslsearch.all_methods"
        print(f"{target}: {status}")
        return 0 if same else 1
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
