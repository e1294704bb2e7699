"""The project carries its own documentation: no file points to one outside the repository.

Every tracked text file under the package, the YAML folders, the tests, the docs and the cluster
recipes (and the README, Dockerfile and pyproject.toml) is scanned for names of files that live
only in the team's private notes: the methods, references and architecture sheets, the notes
folder itself, and the numbered source documents. A method's choices belong in docs/methods.md,
published numbers in docs/references.md, the design in docs/design.md, and a paper is cited by its
name. The patterns are built from pieces so that this file does not match them itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("sslsearch", "search_spaces", "experiments", "tests", "docs", "cluster",
           "README.md", "Dockerfile", "pyproject.toml")
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".pt", ".safetensors", ".npz"}
MD = "." + "md"
FORBIDDEN = [
    re.compile(re.escape(name + MD)) for name in ("METHODS", "REFERENCES", "ARCHITECTURE")
] + [
    re.compile(re.escape(".." + "/" + "shared")),
    re.compile("(?i)" + r"\bseeds?" + r" 0" + r"0\d"),
    re.compile(r"\bseeds" + "/" + "0"),
]


def _files() -> list[Path]:
    """The tracked files (``git ls-files``), or every file when there is no git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *SCANNED], cwd=ROOT, check=True,
                             capture_output=True, timeout=30).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
    if names:
        return [ROOT / n for n in names]
    found: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return found


def test_no_file_points_outside_the_repository() -> None:
    files = [p for p in _files() if p.suffix.lower() not in BINARY_SUFFIXES and p.is_file()]
    assert any(p.name == "methods.md" for p in files), "the scan found no docs: wrong root?"
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            for pattern in FORBIDDEN:
                match = pattern.search(line)
                if match:
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r} in "
                                f"{line.strip()[:120]}")
    assert not hits, ("files point outside the repository (cite docs/methods.md, "
                      "docs/references.md, docs/design.md or the paper by name):\n"
                      + "\n".join(hits))


def test_the_patterns_catch_what_they_should() -> None:
    def caught(text: str) -> bool:
        return any(p.search(text) for p in FORBIDDEN)

    for text in ("see " + "METHODS" + MD, "(" + "REFERENCES" + MD + ")",
                 "ARCHITECTURE" + MD + ", known traps", "../" + ".." + "/shared/notes",
                 "DARe (" + "seed 00" + "0)", "Seed 00" + "3: VICReg", "seeds 00" + "1-2",
                 "seeds/" + "000_x.txt"):
        assert caught(text), text
    # Random seeds and the project's own pages stay allowed.
    for text in ("seeds 0-2", "seed 0", "fresh seeds 3-5", "docs/methods.md",
                 "docs/references.md", "/mnt/shared/sslsearch_results", "seed 10", "seed 0, 1"):
        assert not caught(text), text
