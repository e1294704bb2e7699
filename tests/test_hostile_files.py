"""Issue 19, hostile files: what a user (or an attacker) hands the command line is refused quickly,
with exit code 2 and one line, before any trial starts and without unbounded memory or time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sslsearch.run import main
from sslsearch.schema import MAX_YAML_BYTES

# "Billion laughs": 9 levels of 10 aliases each stand for 10^9 leaves in ~600 bytes.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("flag", ["--space", "--experiment"])
def test_a_yaml_bomb_is_refused_at_once(tmp_path: Path, flag: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("method: simclr\n" + BOMB if flag == "--space" else BOMB)
    args = ["--space", "simclr", "--experiment", "quick", flag, str(bomb)]
    t0 = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - t0 < 10
    line = _one_line(capsys)
    assert str(bomb) in line and "aliases" in line


def test_a_fifo_or_a_folder_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    assert main(["--space", str(fifo)]) == 2
    assert "not a regular file" in _one_line(capsys)
    assert main(["--space", "simclr", "--experiment", str(tmp_path)]) == 2
    assert "not a regular file" in _one_line(capsys)


def test_an_oversized_file_is_refused_unread(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("method: simclr\n#" + "x" * MAX_YAML_BYTES + "\n")
    assert main(["--space", str(big)]) == 2
    line = _one_line(capsys)
    assert str(big) in line and "bytes" in line


# ------------------------------------------------------------------------------------------------
# Checkpoints and weights


def _state(value: float) -> dict[str, object]:
    import torch

    return {"epoch": 1, "model": {"w": torch.full((3,), value)}}


def test_a_truncated_or_pickled_checkpoint_falls_back_to_the_previous_one_and_says_so(
        tmp_path: Path) -> None:
    import pickle

    from sslsearch.trial.checkpoint import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, _state(1.0))
    save_checkpoint(tmp_path, _state(2.0))
    said: list[str] = []
    newest = tmp_path / CHECKPOINT
    newest.write_bytes(newest.read_bytes()[:100])  # truncated mid-write by a crash elsewhere
    state = load_checkpoint(tmp_path, say=said.append)
    assert state is not None and float(state["model"]["w"][0]) == 1.0  # the previous one
    assert len(said) == 1 and str(newest) in said[0] and "previous" in said[0]
    # A pickle of arbitrary objects where weights belong: weights_only refuses to run it.
    newest.write_bytes(pickle.dumps({"model": os.system}))
    said.clear()
    state = load_checkpoint(tmp_path, say=said.append)
    assert state is not None and float(state["model"]["w"][0]) == 1.0 and len(said) == 1
    (tmp_path / PREVIOUS).write_bytes(b"garbage")
    said.clear()
    assert load_checkpoint(tmp_path, say=said.append) is None and len(said) == 2
    assert "starting over" in said[-1]


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_checkpoint_that_cannot_be_written_fails_the_trial_with_reason_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    import errno

    import torch

    from sslsearch.errors import TrialFailure
    from sslsearch.trial import checkpoint

    checkpoint.save_checkpoint(tmp_path, _state(1.0))
    before = (tmp_path / checkpoint.CHECKPOINT).read_bytes()

    def full_disk(obj: object, path: object) -> None:
        Path(str(path)).write_bytes(b"partial")  # what a write cut short leaves behind
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrialFailure) as failure:
        checkpoint.save_checkpoint(tmp_path, _state(2.0))
    assert failure.value.reason == "storage" and str(tmp_path) in str(failure.value)
    assert (tmp_path / checkpoint.CHECKPOINT).read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINT]  # no .tmp


def test_a_safetensors_file_whose_header_lies_is_refused_in_one_line(tmp_path: Path) -> None:
    import json
    import struct

    import torch
    from safetensors.torch import save_file

    import sslsearch
    from sslsearch.errors import ConfigError

    weights = tmp_path / "encoder.safetensors"
    save_file({"w": torch.zeros(4, 4)}, str(weights), metadata={"x": "y"})
    blob = weights.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header["w"]["data_offsets"] = [0, 10 ** 9]  # claims a gigabyte the file does not hold
    text = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    with pytest.raises(ConfigError, match="not a readable safetensors file") as err:
        sslsearch.load_encoder(weights)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------
# Requests that could never be met: refused before any trial starts, never a hang


def test_more_gpus_per_trial_than_the_machine_has_exits_2_before_the_sweep(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run([sys.executable, "-m", "sslsearch.run", "--space", "simclr",
                          "--gpus-per-trial", "1", "--storage", "results"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert "--gpus-per-trial 1: the Ray cluster has 0 GPUs" in lines[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no sweep run was opened


def test_a_cuda_trial_without_gpus_per_trial_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump({"description": "x", "trial": {"device": "cuda"},
                                    "search": {"gpus_per_trial": 0}}))
    assert main(["--space", "simclr", "--experiment", str(path)]) == 2
    line = _one_line(capsys)
    assert str(path) in line and "gpus_per_trial" in line
