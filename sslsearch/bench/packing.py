"""K trials packed on one device against one alone: each a subprocess running our path only."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sslsearch.bench.config import BenchConfig
from sslsearch.bench.ours import OursPath, setup
from sslsearch.bench.timing import device_name, sync, time_phases
from sslsearch.trial.trial import select_device


def run_child(bc: BenchConfig) -> int:
    """One packed trial: our path only; warm up, say READY, wait for GO, run ``duration`` s."""
    s = setup(bc)
    ours = OursPath(s)
    time_phases([ours.step], bc.warmup, s.device)
    sync(s.device)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    times: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < bc.duration:  # windows as in run_benchmark: one sync each
        times += time_phases([ours.step], bc.window, s.device)[0]
    sync(s.device)
    elapsed = time.perf_counter() - t0
    out = {"steps": len(times), "seconds": elapsed,
           "images_per_s": len(times) * bc.batch_size / elapsed,
           "images_per_s_median": bc.batch_size / statistics.median(times),
           "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _child_argv(bc: BenchConfig, threads: int) -> list[str]:
    argv = [sys.executable, "-m", "sslsearch.bench", "--child",
            "--method", bc.method, "--backbone", bc.backbone, "--dataset", bc.dataset,
            "--backbone-width", str(bc.backbone_width),
            "--batch-size", str(bc.batch_size), "--channels", str(bc.channels),
            "--optimizer", bc.optimizer, "--device", bc.device, "--warmup", str(bc.warmup),
            "--precision", bc.precision,
            "--window", str(bc.window),
            "--duration", str(bc.duration), "--threads", str(threads)]
    if bc.data_dir is not None:
        argv += ["--data-dir", bc.data_dir]
    if bc.image_size is not None:
        argv += ["--image-size", str(bc.image_size)]
    if bc.compile:
        argv += ["--compile", "--compile-mode", bc.compile_mode]
    return argv


class TrialExited(RuntimeError):
    """A packed benchmark trial ended without reporting (its stderr says why)."""


def _read_tagged(proc: subprocess.Popen[str], tag: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(tag):
            return line[len(tag):].strip()
    proc.wait()
    raise TrialExited(f"a benchmark trial exited (code {proc.returncode}) before {tag.strip()}")


def _packed(bc: BenchConfig, k: int, threads: int) -> list[dict[str, float]]:
    """K child trials started together (a barrier after warm-up); their results."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs = [subprocess.Popen(_child_argv(bc, threads), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    try:
        for p in procs:
            _read_tagged(p, "READY")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results: list[dict[str, float]] = [json.loads(_read_tagged(p, "RESULT ")) for p in procs]
        for p in procs:
            p.wait()
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_packing(bc: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One trial alone, ``bc.trials`` packed, one alone again: aggregate images/s and the gain."""
    bc.check()
    say = log or (lambda _: None)
    device = select_device(bc.device)
    cores = os.cpu_count() or 1
    alone_threads = bc.threads or cores
    packed_threads = bc.threads or max(1, cores // bc.trials)
    say(f"one trial alone ({alone_threads} threads, {bc.duration:g} s)")
    before = _packed(bc, 1, alone_threads)[0]
    say(f"{bc.trials} trials packed ({packed_threads} threads each, {bc.duration:g} s)")
    packed = _packed(bc, bc.trials, packed_threads)
    say("one trial alone again")
    after = _packed(bc, 1, alone_threads)[0]
    single = (before["images_per_s"] + after["images_per_s"]) / 2
    aggregate = sum(r["images_per_s"] for r in packed)
    return {"config": dataclasses.asdict(bc), "device": device_name(device), "k": bc.trials,
            "single_before": before, "single_after": after, "packed": packed,
            "single_images_per_s": single, "aggregate_images_per_s": aggregate,
            "gain": aggregate / single}
