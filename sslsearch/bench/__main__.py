"""``python -m sslsearch.bench`` (throughput), ``python -m sslsearch.bench search`` and
``python -m sslsearch.bench selection``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from sslsearch.bench.config import BenchConfig
from sslsearch.bench.packing import TrialExited, run_child, run_packing
from sslsearch.bench.report import format_report
from sslsearch.bench.throughput import run_benchmark
from sslsearch.errors import OneLineParser, exit_code


def build_parser(d: BenchConfig) -> argparse.ArgumentParser:
    """The throughput benchmark's flags, their defaults ``d``'s."""
    import sslsearch.bench

    doc = sslsearch.bench.__doc__
    p = OneLineParser(prog="python -m sslsearch.bench", description=doc.split("\n\n")[0]
                if doc else None)
    p.add_argument("--method", default=d.method, help="SSL method (default: %(default)s)")
    p.add_argument("--backbone", default=d.backbone,
                   help="small_cnn, resnet18, resnet34, resnet50 (default: %(default)s)")
    p.add_argument("--backbone-width", type=int, default=0,
                   help="small_cnn / mlp width; 0 keeps the default (default: %(default)s)")
    p.add_argument("--dataset", default=d.dataset,
                   help="synthetic (random uint8, no download) or an sslsearch dataset of images "
                        "(digits, fashion_mnist, cifar10, ...) (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic image side (default 32); a dataset is resized only if given")
    p.add_argument("--channels", type=int, default=d.channels,
                   help="synthetic images' channels, 1 or 3 (default: %(default)s)")
    p.add_argument("--optimizer", default=d.optimizer, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone and the augmentation (ours)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, reduce-overhead (CUDA graphs), "
                        "max-autotune, max-autotune-no-cudagraphs (default: %(default)s)")
    p.add_argument("--precision", default=d.precision,
                   help="ours: auto (bf16 autocast on CUDA and on CPUs with native bf16), bf16 "
                        "or fp32 (default: %(default)s)")
    p.add_argument("--conventional-precision", default=d.conventional_precision,
                   help="the conventional path's: library (as the public libraries' defaults: "
                        "bf16 autocast on CUDA, fp32 on the CPU), same (as ours), bf16 or fp32 "
                        "(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="alternating timed windows per path (default: %(default)s)")
    p.add_argument("--window", type=int, default=d.window,
                   help="timed steps per window (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="untimed steps per path first (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="conventional path's DataLoader workers (default: %(default)s)")
    p.add_argument("--trials", type=int, default=0,
                   help="K > 0: instead, K trials packed on the device against one alone")
    p.add_argument("--duration", type=float, default=d.duration,
                   help="seconds per packing measurement (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (default: torch's; packing: cores / K)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s (default: known GPUs by name)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> tuple[BenchConfig, bool, str | None]:
    """``(config, child mode, json path)`` from the command line."""
    a = build_parser(BenchConfig()).parse_args(argv)
    bc = BenchConfig(method=a.method, backbone=a.backbone, backbone_width=a.backbone_width,
                     dataset=a.dataset,
                     data_dir=a.data_dir, batch_size=a.batch_size, image_size=a.image_size,
                     channels=a.channels, optimizer=a.optimizer, device=a.device,
                     compile=a.compile, compile_mode=a.compile_mode, precision=a.precision,
                     conventional_precision=a.conventional_precision,
                     rounds=a.rounds,
                     window=a.window, warmup=a.warmup,
                     workers=a.workers, trials=a.trials, duration=a.duration, threads=a.threads,
                     peak_tflops=a.peak_tflops)
    bc.check()
    bc.trial()  # method, backbone name checks and the like, before any work
    return bc, a.child, a.json


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["search"]:  # the search benchmark: python -m sslsearch.bench search --help
        from sslsearch.bench.search import main as search_main

        return search_main(args[1:])
    if args[:1] == ["selection"]:  # the selection simulation (no torch, no Ray)
        from sslsearch.bench.selection import main as selection_main

        return selection_main(args[1:])
    if args[:1] == ["preflight"]:  # the pre-flight's cost on a large folder
        from sslsearch.bench.preflight import main as preflight_main

        return preflight_main(args[1:])
    if args[:1] == ["workers"]:  # images/s at 1 and 2 workers per trial
        from sslsearch.bench.workers import main as workers_main

        return workers_main(args[1:])
    return exit_code(lambda: _run(args), failures=(TrialExited,))


def _run(args: list[str]) -> int:
    bc, child, json_path = parse_args(args)
    if bc.threads:
        torch.set_num_threads(bc.threads)
    if child:
        return run_child(bc)

    def say(msg: str) -> None:
        print(f"  .. {msg}", file=sys.stderr, flush=True)

    result = run_packing(bc, say) if bc.trials > 0 else run_benchmark(bc, say)
    print(format_report(result), flush=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
