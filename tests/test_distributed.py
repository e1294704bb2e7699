"""Data parallelism (issue 33): 2 workers × batch B equal 1 process × batch 2B, for every method.

One pair of gloo worker processes (``torch.multiprocessing``, spawned once for the module) runs
every case of tests/distributed_cases.py on its shard of the same global batches, every broken
variant, and the training loop itself; this process runs each case on the whole batch and
compares.

Tolerance (float64 cases): the first step's loss within ``1e-9 · max(1, |L|)``, every parameter's
gradient within ``1e-9 ×`` the case's largest gradient entry, and every parameter and buffer
after :data:`~tests.distributed_cases.STEPS` steps within ``1e-9 · max(1, |value|)`` (integer
buffers equal). Measured differences are ≈ 1e-14 of the scale (summation order); each broken rule
below moves the gradients by 5-300 % of it, ten million times the tolerance.

No method is per-worker by design here, so every one is held to full equivalence: MoCo's
shuffled BatchNorm (per-GPU BN, keys shuffled across GPUs) is not reproduced, and its BatchNorm
spans the global batch as on one device (the MoCo case checks exactly that, queue and EMA key
encoder included).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sslsearch import methods
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup, TorchProcessGroup, spawn
from tests import distributed_cases as cases

RTOL = 1e-9
LOOP = {"method": "simclr", "epochs": 2, "max_train_samples": 128, "batch_size": 32,
        "optimizer": "sgd", "base_lr": 0.1, "precision": "fp32"}


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything the two workers computed (spawned once: about 15 s on 2 busy cores)."""
    folder = tmp_path_factory.mktemp("workers")
    t0 = time.perf_counter()
    spawn(cases.worker_main, cases.WORLD_SIZE, str(folder / "results.pt"),
          {"folder": str(folder), "trial": LOOP})
    results: dict[str, Any] = torch.load(folder / "results.pt", weights_only=True)
    results["seconds"] = time.perf_counter() - t0
    results["folder"] = folder
    return results


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def differences(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, float]:
    """The first step's loss and gradients, and the final state, of ``got`` against ``ref``,
    each as its difference over its tolerance's scale (≤ RTOL passes)."""
    assert ref["grads"].keys() == got["grads"].keys()  # the same parameters took a gradient
    scale = max(_max_abs(g) for g in ref["grads"].values())
    out = {"loss": abs(got["loss"] - ref["loss"]) / max(1.0, abs(ref["loss"]))}
    for name, g in ref["grads"].items():
        out[f"grad {name}"] = _max_abs(got["grads"][name] - g) / scale
    for name, v in ref["state"].items():
        if v.is_floating_point():
            out[f"state {name}"] = _max_abs(got["state"][name] - v) / max(1.0, _max_abs(v))
        else:
            out[f"state {name}"] = float(not torch.equal(got["state"][name], v))
    return out


def test_every_method_has_a_case() -> None:
    assert {method for method, _ in cases.CASES.values()} == set(methods.available())


@pytest.mark.parametrize("case", list(cases.CASES))
def test_two_workers_equal_one_process_on_the_global_batch(workers: dict[str, Any],
                                                           case: str) -> None:
    ref = cases.run_case(case)
    worst = differences(ref, workers["cases"][case])
    bad = {k: v for k, v in worst.items() if not v <= RTOL}
    assert not bad, f"{case}: over {RTOL:g} of the scale: {bad}"


@pytest.mark.parametrize("mutation", list(cases.MUTATIONS))
def test_a_broken_rule_is_caught(workers: dict[str, Any], mutation: str) -> None:
    """Each broken group (a gather without gradient, gradients summed, per-worker BatchNorm,
    statistics or draws) moves the gradients far past the tolerance: the equivalence test
    would fail with it."""
    case = cases.MUTATIONS[mutation][0]
    worst = differences(cases.run_case(case), workers["mutations"][mutation])
    grads = max(v for k, v in worst.items() if k.startswith("grad"))
    assert grads > 1e4 * RTOL, (mutation, grads)


def test_the_training_loop_on_two_workers_equals_one_process(workers: dict[str, Any]) -> None:
    """``train.run`` on 2 workers (each its rows of every global batch, augmentations drawn for
    the whole batch, lr of the global batch, rank 0 evaluating and checkpointing, random states
    synchronised after it) ends where one process ends, to float32 rounding over 8 steps."""
    from sslsearch import train
    from sslsearch.config import trial_config
    from sslsearch.trial.checkpoint import load_checkpoint

    folder = workers["folder"] / "one"
    ref = train.run(trial_config(LOOP), checkpoint_dir=folder)
    state = load_checkpoint(folder)
    assert state is not None
    got = workers["loop"]
    assert got["files"] == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert not (Path(workers["folder"]) / "rank1").exists()  # rank 0 alone writes
    for key in ("epoch", "lr", "init_knn_acc", "raw_knn_acc", "raw_probe_acc"):
        assert got["metrics"][key] == ref[key], key
    for key in ("train_loss", "probe_val_acc", "embed_std_ratio", "rankme"):
        assert got["metrics"][key] == pytest.approx(ref[key], rel=1e-4), key
    assert abs(got["metrics"]["val_knn_acc"] - ref["val_knn_acc"]) <= 0.02
    for name, v in state["model"].items():
        if v.is_floating_point():
            assert _max_abs(got["state"][name] - v) <= 1e-5 * max(1.0, _max_abs(v)), name
        else:
            assert torch.equal(got["state"][name], v), name


def test_shard_and_gather_are_inverse_one_process_is_the_identity() -> None:
    x = torch.arange(24.0).view(12, 2)
    assert ONE_PROCESS.shard(x) is x and ONE_PROCESS.gather(x) is x

    class Rank1(ProcessGroup):
        world_size, rank = 2, 1

    two_views = torch.cat([x[:6], x[6:]])  # 2 views x 6 rows: rank 1 holds rows 3-5 of each
    assert torch.equal(Rank1().shard(two_views, views=2), torch.cat([x[3:6], x[9:12]]))
    draws = Rank1().sharded(lambda n: torch.arange(float(n)).view(1, n), 3, dim=1)
    assert draws.tolist() == [[3.0, 4.0, 5.0]]


def test_a_torch_group_needs_torch_distributed() -> None:
    with pytest.raises(RuntimeError, match="initialised"):
        TorchProcessGroup()
