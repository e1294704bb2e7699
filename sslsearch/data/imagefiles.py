"""An ImageFolder's files, listed and checked without decoding them: the one listing the loader
(:mod:`sslsearch.data.imagefolder`) and the driver's pre-flight (:mod:`sslsearch.search.preflight`)
share, so both see the same images under the same labels.

Listing. Class folders are the sub-folders of ``train/`` (and ``test/``), sorted by name; a class's
images are the files with an image extension anywhere below its folder, in the order torchvision's
``ImageFolder`` gives them (folders sorted by path, files by name), so splits drawn from the
listing are the ones earlier versions drew. Unlike ``ImageFolder`` (``os.walk(followlinks=True)``)
a symbolic link is followed only when it stays inside the split folder (``train/``, ``test/``, or
the unlabeled folder) and leads to a folder or file not listed yet: a link back up the tree
(``train/a/loop -> ..``) would otherwise be walked until the path grows too long, listing every
image again under the wrong class; a link into another class, or into the other split, would give
an image two labels or put it in both splits. Skipped links are counted and named.

Checking (:func:`examine`). A file is bad when it is empty, not a regular file, not an image
PIL can identify, declares more pixels than PIL's decompression-bomb guard lets through, or is cut
short. PNG and JPEG (nearly every folder) are judged on their header and their last bytes (the
``IEND`` chunk, the ``EOI`` marker), WebP on its RIFF length; a file that fails that cheap test, and
any other format, is decoded to be sure (a JPEG with bytes after its end is valid).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sslsearch.errors import ConfigError

# torchvision.datasets.folder.IMG_EXTENSIONS, named here so the listing needs no torchvision.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGES_FILE = "bad_images.txt"  # the full list, in the results folder

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk: length 0, type, CRC
_JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class Listing:
    """The images of one split folder: ``files[i]`` has label ``labels[i]`` (an index into
    ``classes``; all 0 for an unlabeled folder, whose ``classes`` is empty)."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    skipped_links: tuple[Path, ...]  # links not followed: out of the data folder, or a revisit

    def counts(self) -> list[int]:
        """Images per class (one entry per class, zeros included)."""
        out = [0] * max(1, len(self.classes))
        for label in self.labels:
            out[label] += 1
        return out

    def without(self, bad: Iterable[Path]) -> Listing:
        """The listing less the files ``bad`` (labels kept aligned)."""
        drop = set(bad)
        if not drop:
            return self
        kept = [(f, y) for f, y in zip(self.files, self.labels, strict=True) if f not in drop]
        return Listing(tuple(f for f, _ in kept), tuple(y for _, y in kept), self.classes,
                       self.skipped_links)


class _Walk:
    """One listing's state: the split folder's real path, the folders and files already listed
    or claimed by a class (by real path) and the links skipped."""

    def __init__(self, top: Path) -> None:
        self.top = os.path.realpath(top)
        self.dirs: set[str] = {self.top}
        self.files: set[str] = set()
        self.skipped: list[Path] = []

    def claim(self, path: Path, is_dir: bool, real: str | None = None) -> bool:
        """Whether to list ``path`` (a folder when ``is_dir``): inside the split folder and not
        reached before (a link back up the tree, or to another class, is a revisit); a path
        refused is counted as a skipped link (only links can lead out or back). ``real``: its
        real path when known (a plain entry of a folder whose real path is known)."""
        real = os.path.realpath(path) if real is None else real
        seen = self.dirs if is_dir else self.files
        inside = real == self.top or real.startswith(self.top + os.sep)
        if not inside or real in seen:
            self.skipped.append(path)
            return False
        seen.add(real)
        return True

    def images(self, folder: Path, recursive: bool) -> list[Path]:
        """The image files under ``folder`` in torchvision's order: folders sorted by path,
        then files by name. Only links are resolved (``realpath`` costs a system call per path
        component): a plain entry's real path is its folder's plus its name."""
        per_dir: list[tuple[str, list[Path]]] = []
        pending = [(folder, os.path.realpath(folder))]
        while pending:
            current, current_real = pending.pop()
            names: list[Path] = []
            for entry in _scan(current):
                link = entry.is_symlink()
                real = None if link else os.path.join(current_real, entry.name)
                path = Path(entry.path)
                if entry.is_dir():  # follows a link: where it leads is judged by claim()
                    if recursive and self.claim(path, is_dir=True, real=real):
                        pending.append((path, real or os.path.realpath(path)))
                elif entry.name.lower().endswith(IMG_EXTENSIONS):
                    if link and not path.exists():
                        continue  # a dangling link: nothing to read
                    if self.claim(path, is_dir=False, real=real):
                        names.append(path)
            per_dir.append((str(current), sorted(names, key=lambda p: p.name)))
        per_dir.sort(key=lambda item: item[0])
        return [p for _, names in per_dir for p in names]


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as err:
        raise ConfigError(f"{folder}: cannot be listed ({err.strerror or err})") from None


def class_names(folder: Path) -> list[str]:
    """The class folders of ``folder`` (sub-folders, links included), sorted by name."""
    return sorted(e.name for e in _scan(folder) if e.is_dir())


def list_labeled(folder: Path, classes: list[str] | None = None) -> Listing:
    """Every image under ``folder/<class>/`` (``classes``: these class folders, in this order;
    default: every sub-folder), links followed only inside ``folder``. Every class folder is
    claimed before any is walked, so a link from one class into another is a revisit."""
    walk = _Walk(folder)
    names = class_names(folder) if classes is None else classes
    tops = [folder / n if (folder / n).is_dir() and walk.claim(folder / n, is_dir=True)
            else None for n in names]
    files: list[Path] = []
    labels: list[int] = []
    for label, top in enumerate(tops):
        found = [] if top is None else walk.images(top, recursive=True)
        files += found
        labels += [label] * len(found)
    return Listing(tuple(files), tuple(labels), tuple(names), tuple(walk.skipped))


def list_unlabeled(folder: Path) -> Listing:
    """The image files right in ``folder`` (no sub-folders), sorted by name, all label 0."""
    walk = _Walk(folder)
    files = walk.images(folder, recursive=False)
    return Listing(tuple(files), (0,) * len(files), (), tuple(walk.skipped))


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds image files directly."""
    return any(e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file() for e in _scan(folder))


# ----------------------------------------------------------------------------- checking


def examine(path: Path) -> tuple[str | None, int]:
    """Why ``path`` cannot be used as an image (a few words; None when it can), and the pixels
    its header declares (0 when it has none)."""
    try:
        st = os.stat(path)  # before opening: opening a FIFO would block
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file", 0
        if st.st_size == 0:
            return "empty file (0 bytes)", 0
        fd = os.open(path, os.O_RDONLY)
        try:
            head, tail = os.pread(fd, 32, 0), os.pread(fd, 12, max(0, st.st_size - 12))
        finally:
            os.close(fd)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})", 0
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 24:
        size = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        problem = _bomb(size) or (None if tail == _PNG_IEND else _decodes(path))
        return problem, size[0] * size[1]
    return _pil_check(path, st.st_size, head, tail)


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can (:func:`examine`)."""
    return examine(path)[0]


def _pil_check(path: Path, n_bytes: int, head: bytes, tail: bytes) -> tuple[str | None, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, size = im.format, im.size
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {err}", 0
    except UnidentifiedImageError:
        return "not an image PIL can identify", 0
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on a bad header
        return f"unreadable header ({' '.join(str(err).split())[:120]})", 0
    pixels = size[0] * size[1]
    if bomb := _bomb(size):
        return bomb, pixels
    if fmt == "JPEG" and tail.endswith(_JPEG_EOI):
        return None, pixels
    if fmt == "WEBP" and int.from_bytes(head[4:8], "little") + 8 <= n_bytes:
        return None, pixels
    return _decodes(path), pixels


def _bomb(size: tuple[int, int]) -> str | None:
    """PIL's own limit: it refuses (DecompressionBombError) above twice MAX_IMAGE_PIXELS."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > 2 * limit:
        return (f"declares {size[0]}x{size[1]} pixels, over PIL's decompression-bomb limit of "
                f"{2 * limit} pixels")
    return None


def _decodes(path: Path) -> str | None:
    """Decode ``path`` in full: only for files the cheap checks could not vouch for."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {err}"
    except (OSError, ValueError, SyntaxError) as err:
        return f"truncated or corrupt ({' '.join(str(err).split())[:120]})"
    return None


def survey(files: Iterable[Path]) -> tuple[list[tuple[Path, str]], int]:
    """The files of ``files`` that :func:`examine` refuses, with why, in order; and the largest
    pixel count a usable one declares."""
    bad: list[tuple[Path, str]] = []
    largest = 0
    for f in files:
        problem, pixels = examine(f)
        if problem is not None:
            bad.append((f, problem))
        else:
            largest = max(largest, pixels)
    return bad, largest


def bad_images_text(bad: list[tuple[Path, str]]) -> str:
    """The list file's text: one ``path<TAB>reason`` line per bad file."""
    return "".join(f"{path}\t{why}\n" for path, why in bad)


def refuse_bad(bad: list[tuple[Path, str]], listed_in: Path | None, flag: str) -> ConfigError:
    """The one-line error for bad files: the first named, the others counted."""
    path, why = bad[0]
    others = (f" and {len(bad) - 1} other bad image{'s' if len(bad) > 2 else ''}"
              if len(bad) > 1 else "")
    where = f" (all listed in {listed_in})" if listed_in is not None else ""
    return ConfigError(f"{path}: {why}{others}{where}; fix or remove them, or leave them out "
                       f"with {flag}")
