"""What the pre-flight costs: ``python -m sslsearch.bench preflight``. A benchmark, not a test.

Writes (or reuses) an ImageFolder of ``--images`` small PNGs (``train/`` and ``test/``,
``--classes`` class folders), then times, each ``--repeats`` times, in one process (the page cache
warm after the first pass, as on a sweep's second start; state that when quoting the first pass):

* **listing**: :func:`sslsearch.data.imagefiles.list_labeled` of both splits (what the loader and
  the pre-flight share), beside torchvision's ``ImageFolder`` listing of the same folder;
* **survey**: the header and tail checks of every file (:func:`sslsearch.data.imagefiles.survey`);
* **pre-flight**: :func:`sslsearch.search.preflight.check_sweep` of an experiment on the folder, as
  ``python -m sslsearch.run`` calls it (listing + survey + split and memory checks);
* **quick**: the same call for the smoke experiment (``quick``, digits: nothing to read); the
  default experiment (``fashion_small``) reads only its embedded files' headers and labels;
* **decode**: a full decode (PIL, RGB) of ``--decode-sample`` files, scaled to the folder, for
  scale: what reading the images would cost.

    python -m sslsearch.bench preflight --images 50000 --folder /tmp/pf50k
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sslsearch.errors import ConfigError, OneLineParser, exit_code


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sslsearch.bench preflight",
                description="Time the sweep's pre-flight on a folder of small PNGs.")
    p.add_argument("--images", type=int, default=50_000, help="images in all (default: 50000)")
    p.add_argument("--classes", type=int, default=10, help="class folders (default: 10)")
    p.add_argument("--side", type=int, default=28, help="PNG side in pixels (default: 28)")
    p.add_argument("--folder", default=None,
                   help="where the folder is written, or reused when it holds --images PNGs "
                        "(default: a temporary folder, deleted afterwards)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (default: 3)")
    p.add_argument("--decode-sample", type=int, default=2000,
                   help="files fully decoded for scale (default: 2000)")
    return p


def write_folder(root: Path, images: int, classes: int, side: int) -> None:
    """``images`` random ``side`` x ``side`` RGB PNGs, 1/6 of them under test/, round-robin over
    ``classes`` class folders; kept when already there."""
    import numpy as np
    from PIL import Image

    if sum(1 for _ in root.rglob("*.png")) == images:
        return
    rng = np.random.default_rng(0)
    n_test = images // 6
    for i in range(images):
        part, cls = ("test" if i < n_test else "train"), f"class_{i % classes:02d}"
        folder = root / part / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8)).save(
            folder / f"{i:06d}.png")


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(root: Path, repeats: int, decode_sample: int) -> dict[str, list[float]]:
    """Seconds per pass of each stage (see the module docstring)."""
    import torchvision.datasets

    from sslsearch.config import load_experiment, trial_config
    from sslsearch.data.imagefiles import list_labeled, survey
    from sslsearch.search.preflight import check_sweep

    exp = load_experiment("quick")
    on_folder = dataclasses.replace(exp, trial=trial_config(
        {"dataset": "imagefolder", "data_dir": str(root)}, base=exp.trial))
    files = [*list_labeled(root / "train").files, *list_labeled(root / "test").files]
    storage = tempfile.mkdtemp(prefix="sslsearch-bench-preflight-")
    sample = files[:: max(1, len(files) // decode_sample)][:decode_sample]
    return {
        "listing (ours, train + test)": timed(lambda: (list_labeled(root / "train"),
                                                       list_labeled(root / "test")), repeats),
        "listing (torchvision ImageFolder)": timed(
            lambda: (torchvision.datasets.ImageFolder(str(root / "train")),
                     torchvision.datasets.ImageFolder(str(root / "test"))), repeats),
        "survey (headers + tails)": timed(lambda: survey(files), repeats),
        "pre-flight, this folder": timed(
            lambda: check_sweep(on_folder, None, storage, "bench", say=lambda _: None), repeats),
        "pre-flight, quick (digits)": timed(
            lambda: check_sweep(exp, None, storage, "bench", say=lambda _: None), repeats),
        f"full decode, scaled from {len(sample)} files": [
            t * len(files) / max(1, len(sample)) for t in timed(lambda: _decode(sample), 1)],
    }


def _decode(files: Sequence[Path]) -> None:
    from PIL import Image

    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").load()


def report(results: dict[str, list[float]], images: int) -> str:
    lines = [f"pre-flight cost on {images:,} PNGs (seconds per pass; first pass, then median "
             "of the rest)"]
    for name, times in results.items():
        rest = times[1:] or times
        lines.append(f"  {name:<44} first {times[0]:8.3f}   median {statistics.median(rest):8.3f}"
                     f"   ({1e6 * statistics.median(rest) / images:.1f} µs per image)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.images < args.classes * 12 or args.repeats < 1:
        raise ConfigError("--images must give every class at least 12 images; --repeats >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder).expanduser() if args.folder else Path(tmp) / "folder"
        t0 = time.perf_counter()
        write_folder(root, args.images, args.classes, args.side)
        print(f"folder {root}: {args.images:,} PNGs of {args.side}x{args.side} in "
              f"{args.classes} classes (ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        print(report(measure(root, args.repeats, args.decode_sample), args.images))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_code(lambda: run(build_parser().parse_args(argv)))
