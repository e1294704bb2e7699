"""The two paths timed against each other in one process, interleaved (:mod:`sslsearch.bench`)."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sslsearch.bench.config import MAX_SETTLE_S, BenchConfig
from sslsearch.bench.conventional import ConventionalPath, conventional_bf16
from sslsearch.bench.ours import OursPath, setup
from sslsearch.bench.timing import device_name, flops_per_image, peak_tflops, summary, time_phases
from sslsearch.data import DataBundle

# ------------------------------------------------------------------------------------------------
# The benchmarks.


def run_benchmark(bc: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Ours against the conventional path in alternating windows; returns the result dict."""
    bc.check()
    say = log or (lambda _: None)
    s = setup(bc)
    dev, b = s.device, bc.batch_size
    ours = OursPath(s)
    conv = ConventionalPath(s, bc.workers, bf16=conventional_bf16(bc.conventional_precision, s))
    try:
        say(f"warm-up: {bc.warmup} steps per path (includes compile and worker start-up)")
        time_phases([ours.step], bc.warmup, dev)
        conv_warm = time_phases([conv.step], bc.warmup, dev)[0]
        settle = min(MAX_SETTLE_S, conv.prefetched * conv_warm[-1])
        ours_t: list[list[float]] = []  # step times, one list per timed window
        conv_t: list[list[float]] = []
        ours_cpu = conv_cpu = 0.0  # this process's CPU seconds in each path's steps
        time.sleep(settle)  # the loader's workers refill their queue, then idle
        workers0 = conv.workers_cpu_s()
        conv_window = max(bc.window, 2 * conv.prefetched)  # well past the start-up transient
        conv_steps = 0
        for r in range(bc.rounds):
            c0 = time.process_time()
            ours_t.append(time_phases([ours.step], bc.window, dev)[0])
            c1 = time.process_time()
            conv_steps += conv.drain() + conv_window
            window = time_phases([conv.step], conv_window, dev)[0]
            conv_cpu += time.process_time() - c1
            ours_cpu += c1 - c0
            conv_t.append(window)
            conv_mean = statistics.fmean(window)
            settle = min(MAX_SETTLE_S, conv.prefetched * conv_mean)
            time.sleep(settle)  # the queue is full again: workers produced what was consumed
            ours_mean = statistics.fmean(ours_t[-1])
            say(f"round {r + 1}/{bc.rounds}: ours {b / ours_mean:.0f} img/s, "
                f"conventional {b / conv_mean:.0f} img/s")
        workers1 = conv.workers_cpu_s()
    finally:
        conv.close()
    workers_cpu = None if workers0 is None or workers1 is None else workers1 - workers0

    say("breakdown of our step")
    holder: list[tuple[Tensor, Tensor, Tensor]] = []

    def aug_phase() -> None:
        holder[:] = [ours.views()]

    def model_phase() -> None:
        x1, x2, _ = holder.pop()
        ours.model_only(x1, x2)

    aug_t, model_t, full_t = time_phases([aug_phase, model_phase, ours.step],
                                         breakdown_samples(bc), dev)
    step_med = statistics.median(full_t)
    aug_med, model_med = statistics.median(aug_t), statistics.median(model_t)
    loss_med = step_med - aug_med - model_med

    data = s.trial.data
    result: dict[str, Any] = {
        "config": dataclasses.asdict(bc),
        "device": device_name(dev),
        "autocast": {"ours": "bf16" if s.trial.bf16 else "fp32",
                     "conventional": "bf16" if conv.bf16 else "fp32"},
        "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else 0,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "data": {"name": data.name, "train_images": len(data.train),
                 "shape": [data.in_channels, data.image_size, data.image_size]},
        "ours": {**summary(ours_t, b), "cpu_s_per_step": ours_cpu / (bc.rounds * bc.window)},
        "conventional": {
            **summary(conv_t, b),
            "cpu_s_per_step": None if workers_cpu is None
            else (conv_cpu + workers_cpu) / conv_steps,
            "workers_cpu_s_per_step": None if workers_cpu is None else workers_cpu / conv_steps},
        "breakdown": {"samples": len(full_t), "step_s": step_med, "augment_s": aug_med,
                      "model_s": model_med, "loss_s": loss_med, "augment_share": aug_med / step_med,
                      "model_share": model_med / step_med, "loss_share": loss_med / step_med},
    }
    result["ratio_median"] = (result["ours"]["images_per_s_median"]
                              / result["conventional"]["images_per_s_median"])
    result["ratio_best"] = (result["ours"]["images_per_s_best"]
                            / result["conventional"]["images_per_s_best"])
    oc, cc = result["ours"]["cpu_s_per_step"], result["conventional"]["cpu_s_per_step"]
    result["ratio_cpu"] = None if cc is None or oc <= 0 else cc / oc
    result["compute"] = compute(bc, data, dev, result["ours"]["images_per_s_median"])
    return result


def breakdown_samples(bc: BenchConfig) -> int:
    """Half as many as each path's timed steps (each sample costs about two steps)."""
    return bc.rounds * -(-bc.window // 2)


def compute(bc: BenchConfig, data: DataBundle, device: torch.device,
             images_per_s: float) -> dict[str, float | None]:
    flops = flops_per_image(bc, data)
    peak = peak_tflops(bc, device)
    achieved = None if flops is None else flops * images_per_s / 1e12
    bound = None if flops is None or peak is None else peak * 1e12 / flops
    return {"gflop_per_image": None if flops is None else flops / 1e9,
            "achieved_tflops": achieved, "peak_tflops": peak, "bound_images_per_s": bound,
            "fraction_of_bound": None if bound is None else images_per_s / bound}
