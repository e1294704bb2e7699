"""The benchmark's report: the figures as text."""

from __future__ import annotations

from typing import Any

from sslsearch.bench.config import SPIN_NOTE

# ------------------------------------------------------------------------------------------------
# Report and command line.


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_report(r: dict[str, Any]) -> str:
    """The result dict of ``run_benchmark`` or ``run_packing`` as a readable table."""
    c = r["config"]
    width = f" (width {c['backbone_width']})" if c["backbone_width"] else ""
    head = (f"{c['method']} / {c['backbone']}{width} on {c['dataset']}, batch {c['batch_size']}, "
            f"compile {c['compile_mode'] if c['compile'] else 'off'}, precision {c['precision']}, "
            f"device {r['device']}")
    if "k" in r:
        lines = [head, f"packing: {r['k']} trials for {c['duration']:g} s each measurement",
                 "", f"{'run':<28}{'threads':>8}{'steps':>8}{'img/s':>10}"]

        def row(name: str, x: dict[str, float]) -> str:
            return f"{name:<28}{x['threads']:>8}{x['steps']:>8}{x['images_per_s']:>10.0f}"

        lines.append(row("one alone (before)", r["single_before"]))
        lines += [row(f"packed trial {i + 1}/{r['k']}", x) for i, x in enumerate(r["packed"])]
        lines.append(row("one alone (after)", r["single_after"]))
        lines += ["", f"aggregate of {r['k']} packed: {r['aggregate_images_per_s']:.0f} img/s; "
                  f"one alone (mean of both): {r['single_images_per_s']:.0f} img/s; "
                  f"gain {r['gain']:.2f}x"]
        return "\n".join(lines)
    d, o, v, bd, cp = r["data"], r["ours"], r["conventional"], r["breakdown"], r["compute"]
    a = r["autocast"]
    lines = [
        head,
        f"precision: ours {a['ours']} ({c['precision']}), conventional {a['conventional']} "
        f"({c['conventional_precision']})",
        *([SPIN_NOTE] if r["cpu_threads"] > 1 and r["omp_wait_policy"] is None else []),
        f"data: {d['name']} {d['shape'][0]}x{d['shape'][1]}x{d['shape'][2]}, "
        f"{d['train_images']} training images; each image = 2 views",
        f"protocol: {c['rounds']} rounds, alternating, of {c['window']} timed steps (ours) and "
        f"{r['conventional']['steps'] // c['rounds']} (conventional, from an empty loader queue), "
        f"after {c['warmup']} warm-up steps; conventional: {c['workers']} DataLoader workers",
        "",
        "step = mean step time of a timed window; median and best over the windows",
        f"{'path':<14}{'median step':>13}{'min step':>11}{'img/s median':>14}{'img/s best':>12}"
        f"{'CPU s/step':>12}",
    ]
    for name, x in (("ours", o), ("conventional", v)):
        cpu = "n/a" if x["cpu_s_per_step"] is None else f"{x['cpu_s_per_step']:.3f}"
        lines.append(f"{name:<14}{x['median_step_s'] * 1e3:>10.1f} ms"
                     f"{x['min_step_s'] * 1e3:>8.1f} ms"
                     f"{x['images_per_s_median']:>14.0f}{x['images_per_s_best']:>12.0f}{cpu:>12}")
    lines.append(f"{'ratio ours/conventional':<38}{r['ratio_median']:>13.2f}x"
                 f"{r['ratio_best']:>11.2f}x{fmt(r['ratio_cpu'], '.2f'):>11}x")
    if v["workers_cpu_s_per_step"] is not None:
        lines.append(f"(conventional CPU s/step: {v['workers_cpu_s_per_step']:.3f} in its "
                     f"{c['workers']} workers, the rest in this process)")
    lines += [
        "",
        f"our step, phases timed back to back ({bd['samples']} samples, medians):",
        f"  {'augmentation (gather + 2 views)':<36}{bd['augment_s'] * 1e3:>9.2f} ms"
        f"{bd['augment_share'] * 100:>7.1f} %",
        f"  {'model (fwd + bwd + optimiser)':<36}{bd['model_s'] * 1e3:>9.2f} ms"
        f"{bd['model_share'] * 100:>7.1f} %",
        f"  {'loss & method extras (remainder)':<36}{bd['loss_s'] * 1e3:>9.2f} ms"
        f"{bd['loss_share'] * 100:>7.1f} %",
        f"  {'full step':<36}{bd['step_s'] * 1e3:>9.2f} ms",
        "",
        f"compute: {fmt(cp['gflop_per_image'], '.3f')} GFLOP/image (fwd + bwd, 2 views); "
        f"achieved {fmt(cp['achieved_tflops'], '.3f')} TFLOP/s; peak "
        f"{fmt(cp['peak_tflops'], '.0f')} TFLOP/s -> bound {fmt(cp['bound_images_per_s'], '.0f')}"
        f" img/s; fraction of bound {fmt(cp['fraction_of_bound'], '.3f')}",
    ]
    return "\n".join(lines)
