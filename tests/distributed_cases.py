"""The cases of tests/test_distributed.py, importable by its worker processes.

Each case is a method (or a variant whose distributed path differs) on a tiny float64 model: a
width-4 small CNN on 16 px one-channel images, heads of 8-16 units. :func:`run_case` takes
:data:`STEPS` SGD steps on fixed global batches of :data:`GLOBAL_BATCH` rows, through
``sslsearch.trial.trial.train_step`` (the loop's own step: forward, backward, gradient averaging,
optimiser, ``after_step``), either as one process on the whole batch or as one of
:data:`WORLD_SIZE` workers on its shard, and returns the first step's loss and gradients and the
state after the last step. float64, so that rounding (≈ 1e-16) is far below the tolerance and
every broken rule (a few per cent at least) far above it.

SGD, not the methods' AdamW: where a gradient is mathematically zero (the bias of a layer
whose output is standardised, Barlow Twins), both runs hold rounding noise, and Adam divides it
by its own square root into a full-size step of arbitrary sign.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sslsearch import methods
from sslsearch.config import TrialConfig
from sslsearch.methods.base import Step, Task
from sslsearch.parts.distributed import ONE_PROCESS, ProcessGroup, TorchProcessGroup
from sslsearch.parts.networks import SmallCNN
from sslsearch.trial.trial import LiveTrial, distribute, train_step

WORLD_SIZE = 2
ROWS = 8  # per worker
GLOBAL_BATCH = WORLD_SIZE * ROWS
STEPS = 3
SIDE = 16
CLASSES = 4

PROJ = {"proj_hidden_dim": 16, "proj_output_dim": 8}
# name -> (method, method_params): every method, and the variants whose distributed path differs.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "simclr": ("simclr", PROJ),
    "npair": ("npair", PROJ),
    "supcon": ("supcon", PROJ),
    "triplet": ("triplet", PROJ),
    "triplet_labels_hardest": ("triplet", {**PROJ, "use_labels": True, "mining": "hardest"}),
    "moco": ("moco", {**PROJ, "queue_size": 24}),  # 16 keys a step: the ring wraps
    "byol": ("byol", {**PROJ, "pred_hidden_dim": 8}),
    "simsiam": ("simsiam", {"proj_dim": 16, "pred_hidden_dim": 4}),
    "swav": ("swav", {**PROJ, "num_prototypes": 5, "freeze_prototypes_epochs": 0}),
    "swav_queue": ("swav", {**PROJ, "num_prototypes": 5, "freeze_prototypes_epochs": 0,
                            "queue_length": 32, "epoch_queue_starts": 0}),  # full at step 3
    "barlow": ("barlow", {"projector_dims": [16, 16]}),
    "vicreg": ("vicreg", {"expander_dims": [16, 16]}),
    "dare": ("dare", PROJ),
    "imix_npair": ("imix", PROJ),
    "imix_moco": ("imix", {**PROJ, "base": "moco", "queue_size": 24}),
    "imix_byol_symmetric": ("imix", {**PROJ, "base": "byol", "pred_hidden_dim": 8,
                                     "symmetric": True}),
    "dae": ("dae", {"decoder_dim": 4}),
    "dae_masking": ("dae", {"decoder_dim": 4, "noise": "masking"}),
    "dae_salt_pepper": ("dae", {"decoder_dim": 4, "noise": "salt_pepper"}),
    "context_encoder": ("context_encoder", {"decoder_dim": 4}),
    "context_encoder_blocks_adversarial": ("context_encoder", {
        "decoder_dim": 4, "discriminator_dim": 4, "mask": "random_blocks",
        "adversarial": True, "adv_weight": 0.3}),
    "rotation": ("rotation", {}),
    "patch_location": ("patch_location", {"head_hidden_dim": 8, "neighbours": 3}),
}


# ------------------------------------------------------------------------------------------------
# Broken process groups: each breaks one rule of sslsearch.parts.distributed, and the tests require
# the comparison to FAIL with it.


class DetachedGather(TorchProcessGroup):
    """The plain all_gather, the worker's own rows put back with their gradient (the common
    bug): the other workers' rows send no gradient back to where they came from."""

    def gather(self, x: Tensor, *, views: int = 1) -> Tensor:
        if not x.requires_grad or views != 1:
            return super().gather(x, views=views)
        parts = list(super().gather(x.detach()).chunk(self.world_size))
        parts[self.rank] = x
        return torch.cat(parts)


class SummedGradients(TorchProcessGroup):
    """Gradients summed over workers, not averaged: the loss scaled by the world size."""

    def average_gradients(self, module: torch.nn.Module) -> None:
        super().average_gradients(module)
        for p in module.parameters():
            if p.grad is not None:
                p.grad.mul_(self.world_size)


class NoGather(TorchProcessGroup):
    """Nothing gathered: every loss, BatchNorm and mix on the worker's own rows, as if each
    worker were alone."""

    def gather(self, x: Tensor, *, views: int = 1) -> Tensor:
        return x

    def shard(self, x: Tensor, *, views: int = 1, dim: int = 0) -> Tensor:
        return x


class LocalDraws(TorchProcessGroup):
    """Random draws for the worker's rows only (so both workers draw the same numbers)."""

    def sharded(self, draw: Any, rows: int, *, views: int = 1, dim: int = 0) -> Tensor:
        out: Tensor = draw(rows)
        return out


# name -> (case, broken group class or None, keep per-worker BatchNorm)
MUTATIONS: dict[str, tuple[str, type[TorchProcessGroup] | None, bool]] = {
    "simclr_gather_without_gradient": ("simclr", DetachedGather, False),
    "simclr_gradients_summed": ("simclr", SummedGradients, False),
    "simclr_batchnorm_per_worker": ("simclr", None, True),
    "byol_batchnorm_per_worker": ("byol", None, True),
    "barlow_statistics_per_worker": ("barlow", NoGather, False),
    "swav_sinkhorn_per_worker": ("swav", NoGather, False),
    "imix_npair_mix_and_negatives_per_worker": ("imix_npair", NoGather, False),
    "dare_noise_drawn_per_worker": ("dare", LocalDraws, False),
    "rotation_angles_drawn_per_worker": ("rotation", LocalDraws, False),
}


def batch(step: int) -> tuple[Tensor, Tensor, Tensor]:
    """The global batch of ``step``: two float64 views (channels_last, as the loop's) and
    labels, the same in every process."""
    gen = torch.Generator().manual_seed(100 + step)
    x1, x2 = (torch.randn(GLOBAL_BATCH, 1, SIDE, SIDE, generator=gen, dtype=torch.float64)
              .contiguous(memory_format=torch.channels_last) for _ in range(2))
    y = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=gen)
    return x1, x2, y


def run_case(name: str, group: ProcessGroup = ONE_PROCESS, *, local_bn: bool = False
             ) -> dict[str, Any]:
    """``STEPS`` steps of case ``name`` as ``group``'s worker (one process: the whole batch)."""
    method_name, params = CASES[name]
    torch.manual_seed(0)  # the weights
    cfg = methods.method_config(method_name, params)
    backbone = SmallCNN(1, width=4, image_size=SIDE)
    method = methods.get(method_name).Method(cfg, backbone, Task("image", CLASSES))
    method = method.double().to(memory_format=torch.channels_last)
    if group.world_size > 1 and local_bn:
        group.broadcast_module(method)
        method.group = group
    elif group.world_size > 1:
        distribute(method, group)
    trial = LiveTrial(TrialConfig(precision="fp32"), None, torch.device("cpu"),  # type: ignore[arg-type]
                      method, eval_batch=0, group=group)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)  # the methods' own draws (noise, masks, permutations)
    out: dict[str, Any] = {}
    for s in range(STEPS):
        x1, x2, y = (ProcessGroup.shard(group, t) for t in batch(s))  # the worker's rows
        terms = train_step(trial, optimizer, x1, x2, y, Step(s, STEPS, 0, STEPS))
        if s == 0:
            out["loss"] = float(group.mean(terms["loss"].detach()))  # what the loop logs
            out["grads"] = {k: p.grad.clone() for k, p in method.named_parameters()
                            if p.grad is not None}
    out["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return out


def worker_main(group: TorchProcessGroup, path: str, loop: dict[str, Any]) -> None:
    """Every case, every mutation and the loop, in one pair of worker processes; rank 0 saves
    the results to ``path``."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {"cases": {}, "mutations": {}}
    for name in CASES:
        results["cases"][name] = run_case(name, group)
    for name, (case, cls, local_bn) in MUTATIONS.items():
        broken = cls() if cls is not None else group
        results["mutations"][name] = run_case(case, broken, local_bn=local_bn)
    results["loop"] = run_loop(group, loop)
    if group.is_main:
        torch.save(results, path)


def run_loop(group: ProcessGroup, settings: dict[str, Any]) -> dict[str, Any]:
    """``sslsearch.train.run`` as ``group``'s worker: its metrics and final checkpoint."""
    from sslsearch import train
    from sslsearch.config import trial_config
    from sslsearch.trial.checkpoint import load_checkpoint

    folder = Path(settings["folder"]) / f"rank{group.rank}"
    cfg = trial_config(settings["trial"])
    metrics = train.run(cfg, checkpoint_dir=folder, group=group)
    state = load_checkpoint(folder) if group.is_main else None
    return {"metrics": metrics, "state": state["model"] if state else None,
            "files": sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}
