"""Trial checkpoints: a dict of tensors and plain values, written atomically (the previous one
kept), read back with ``weights_only=True`` (no pickled code runs)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sslsearch.errors import TrialFailure

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``folder/checkpoint.pt`` atomically, keeping the previous one.

    A crash mid-write leaves a ``.tmp`` file and the old checkpoints intact. A write that fails
    (a full disk, ENOSPC; a read-only one, EROFS; any OSError) removes its partial file, leaves
    the previous checkpoints as they were and fails the trial with reason ``storage``: retrying
    on the same disk would fail again, and Tune's own state is not touched.
    """
    tmp = folder / f"{CHECKPOINT}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise TrialFailure("storage", f"cannot write a checkpoint to {folder}: "
                                      f"{exc.strerror or exc}") from None
    if (folder / CHECKPOINT).exists():
        os.replace(folder / CHECKPOINT, folder / PREVIOUS)
    os.replace(tmp, folder / CHECKPOINT)


def load_checkpoint(folder: Path, *, say: Callable[[str], None] | None = None
                    ) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (falling back to the previous one), or None.

    Read with ``weights_only=True``: a file holding pickled objects other than tensors and plain
    values is refused like a truncated or tampered one. Falling back is said in one line (to
    ``say``, default stderr), naming the file and why."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    for name in (CHECKPOINT, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            return state
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            say(f"checkpoint {path} is unreadable ({reason}); "
                f"{'trying the previous one' if name == CHECKPOINT else 'starting over'}")
    return None
