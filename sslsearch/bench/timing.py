"""Timing and counting: windows of steps (one device sync each), CPU seconds of worker
processes, FLOPs per image and the device's peak."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sslsearch.bench.config import PEAK_TFLOPS, BenchConfig
from sslsearch.data import DataBundle
from sslsearch.methods.base import Step
from sslsearch.trial.trial import build_method

# ------------------------------------------------------------------------------------------------
# Timing.


def time_phases(phases: Sequence[Callable[[], object]], n: int,
                device: torch.device) -> list[list[float]]:
    """Run ``phases`` in order ``n`` times; seconds of each phase run, per phase.

    A phase's time runs from its start to the next phase's start: perf_counter on CPU, CUDA events
    on the current stream on GPU (one synchronize at the end, none in between).
    """
    k = len(phases)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                  for _ in range(n * k + 1)]
        for i in range(n):
            for j, phase in enumerate(phases):
                events[i * k + j].record()
                phase()
        events[-1].record()
        events[-1].synchronize()
        flat = [a.elapsed_time(b) / 1e3 for a, b in zip(events[:-1], events[1:], strict=True)]
    else:
        flat = []
        t = time.perf_counter()
        for _ in range(n):
            for phase in phases:
                phase()
                now = time.perf_counter()
                flat.append(now - t)
                t = now
    return [flat[j::k] for j in range(k)]


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` from ``/proc`` (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": state is field 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(windows: Sequence[Sequence[float]], batch: int) -> dict[str, float]:
    """Throughput per timed window (its steps' mean time), then the median and best window.

    Not the median of single steps: a loader's W workers finish their batches nearly together, so
    its step intervals come in bursts (one long wait, then W - 1 batches already there). The
    median single step is then a step whose batch was waiting, i.e. the model's time, and says
    nothing about how fast the loader delivers. A window's mean covers whole bursts.
    """
    means = [statistics.fmean(w) for w in windows]
    med, best = statistics.median(means), min(means)
    steps = [t for w in windows for t in w]
    return {"steps": len(steps), "windows": len(means), "median_step_s": med, "min_step_s": best,
            "single_step_median_s": statistics.median(steps),
            "images_per_s_median": batch / med, "images_per_s_best": batch / best}


def flops_per_image(bc: BenchConfig, data: DataBundle) -> float | None:
    """Forward + backward FLOPs per image (both views) of the method's step, or None if uncountable.

    Counted on a meta-device copy: no memory, no time, and the benchmarked model is untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    b = 8
    try:
        with torch.device("meta"):
            method = build_method(bc.trial(), data)
            method.train()
            x = torch.zeros(b, data.in_channels, data.image_size, data.image_size)
            y = torch.zeros(b, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            out = method(x, x, y, Step(0, 10**9, 0, 1))
            out["loss"].backward()
        return float(counter.get_total_flops()) / b
    except Exception:  # a method with host-side logic (e.g. .item()) cannot run on meta tensors
        return None


def peak_tflops(bc: BenchConfig, device: torch.device) -> float | None:
    if bc.peak_tflops is not None:
        return bc.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores, "
            f"OMP_WAIT_POLICY {policy})")
