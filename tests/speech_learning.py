"""The speech learning check, shared by tests/test_speech.py and the figures of docs/speech.md:
pretrain on the synthesised Speech Commands fixture (tests/speech_fixture.py), then compare the
encoder with itself at random initialisation and with the raw log-mel features.

    python -m tests.speech_learning --seeds 0,1,2,3,4 [--methods npair,imix] [--set epochs=100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sslsearch.config import trial_config
from sslsearch.train import run
from sslsearch.trial.trial import load_data, probe, select_device, setup_trial

# The default suite's protocol: the 4,040 log-mel features, the MLP encoder at width 128 (4
# layers; narrower heads, as tests/methods/learning.py narrows them), 40 epochs of batch 64 on
# the fixture's 192 training clips (120 steps), no augmentation (kind tabular), a probe of at most
# 100 L-BFGS iterations per weight decay. About two CPU-seconds a method, on one thread.
SPEECH: dict[str, Any] = {
    "dataset": "speech_commands", "backbone": "mlp", "backbone_width": 128, "epochs": 40,
    "batch_size": 64, "base_lr": 0.002, "knn_k": 10, "device": "cpu", "probe": True,
    "probe_max_iter": 100, "label_free": False}
HEADS = {"proj_hidden_dim": 128, "proj_output_dim": 64}
METHODS = ("npair", "imix")
KEYS = ("val_knn", "test_knn", "probe_test")


def measure(method: str, data_dir: Path, params: dict[str, Any] | None = None,
            **overrides: Any) -> dict[str, dict[str, float]]:
    """Per metric (:data:`KEYS`), the accuracy at random init, after pretraining and of the raw
    log-mel features. Random init's validation kNN is the trial's own ``init_knn_acc``; its test
    kNN and probe come from the same seeded encoder before its first step (``setup_trial``)."""
    values = {**SPEECH, "data_dir": str(data_dir), "method": method,
              "method_params": {**HEADS, **(params or {})}, **overrides}
    cfg = trial_config(values, source="test")
    device = select_device(cfg.device)
    threads = torch.get_num_threads()
    # One intra-op thread: on 64-row batches a second one only adds synchronisation, and on a
    # busy machine its spin-waits cost ten times the work (2026-12-07: 24.6 CPU-s for N-pair with
    # two threads, 2.3 with one, at a load of 8 on 2 cores). It also makes the figures the same on
    # machines with other core counts.
    torch.set_num_threads(1)
    try:
        init = probe(setup_trial(cfg, load_data(cfg, device), device))
        last = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return {
        "val_knn": {"init": last["init_knn_acc"], "after": last["val_knn_acc"],
                    "raw": last["raw_knn_acc"]},
        "test_knn": {"init": init["test_knn_acc"], "after": last["test_knn_acc"],
                     "raw": last["raw_test_knn_acc"]},
        "probe_test": {"init": init["probe_test_acc"], "after": last["probe_test_acc"],
                       "raw": last["raw_probe_test_acc"]},
    }


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    """Print each method's accuracies per seed (JSON lines), then their means and spreads."""
    from tests.speech_fixture import build

    p = argparse.ArgumentParser(prog="python -m tests.speech_learning")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--data-dir", help="an existing fixture (default: synthesise one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a trial field over SPEECH's")
    a = p.parse_args(argv)
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(a.data_dir or scratch)
        if a.data_dir is None:
            print(json.dumps({"fixture": build(root)}), flush=True)
        rows: dict[str, list[dict[str, dict[str, float]]]] = {m: [] for m in a.methods.split(",")}
        for seed in (int(s) for s in a.seeds.split(",")):
            for m in rows:
                t0 = time.process_time()
                got = measure(m, root, seed=seed, **overrides)
                rows[m].append(got)
                print(json.dumps({"method": m, "seed": seed, "cpu_s": round(
                    time.process_time() - t0, 1), **{k: {s: round(100 * v, 1) for s, v in
                                                         got[k].items()} for k in KEYS}}),
                      flush=True)
    for m, runs in rows.items():
        for k in KEYS:
            cells = []
            for stage in ("init", "after"):
                xs = [100 * r[k][stage] for r in runs]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                cells.append(f"{statistics.mean(xs):.1f} ± {sd:.1f}")
            print(f"| {m} | {k} | {cells[0]} | {cells[1]} | {100 * runs[0][k]['raw']:.1f} |")


if __name__ == "__main__":
    main()
