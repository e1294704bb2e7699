"""Trial checkpoints: a dict of tensors and plain values, written atomically (the previous one
kept), read back with ``weights_only=True`` (no pickled code runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``folder/checkpoint.pt`` atomically, keeping the previous one.

    A crash mid-write leaves a ``.tmp`` file and the old checkpoints intact.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    if (folder / CHECKPOINT).exists():
        os.replace(folder / CHECKPOINT, folder / PREVIOUS)
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (falling back to the previous one), or None."""
    for name in (CHECKPOINT, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            return state
        except Exception:
            continue
    return None
