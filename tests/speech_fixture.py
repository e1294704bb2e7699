"""A small Speech Commands folder spoken by a real synthesiser, for the speech tests and the note
in docs/speech.md (the real dataset is 2.3 GB, and no test downloads)::

    python -m tests.speech_fixture OUT_DIR

Why espeak-ng: it is a real formant synthesiser in Debian (``apt-get install espeak-ng``), so the
clips are speech with formants, pitch and timing, not tones; and it is deterministic, so the
fixture is the same on every machine with the same espeak-ng. Variety comes from its voices, pitch
(``-p``) and speed (``-s``): a *speaker* is one voice at one pitch, and every speaker says every
word once per speed.

The layout is Speech Commands': ``OUT/<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono 16-bit PCM,
1 s) and ``validation_list.txt`` / ``testing_list.txt``, which hold whole speakers, as the real
lists do. espeak-ng writes 22,050 Hz; each clip is resampled to 16 kHz with torch's antialiased
linear interpolation (``interpolate(mode="bilinear", antialias=True)`` on a 1-pixel-high image:
a triangle filter widened by the 22,050/16,000 ratio, so the band above 8 kHz is damped, not
folded back), trimmed to its voiced part, placed at a seeded random offset in a 1 s clip, and
given seeded noise at -60 dBFS, as a real microphone would (digital silence would make the
silent frames' log-mel a constant).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

WORDS = ("yes", "no", "up", "down", "left", "right")
# espeak-ng's own English voices, two of them with its female variants (+f2, +f3, +f4) and one
# with a male one (+m3): eight distinct timbres.
VOICES = ("en", "en-us", "en-gb-scotland", "en-029", "en+f3", "en-us+f2", "en+m3",
          "en-gb-x-rp+f4")
PITCHES = (30, 50, 70)  # espeak-ng's -p, 0..99 (50 is its default)
SPEEDS = (130, 175)  # words per minute (-s; 175 is its default)
ESPEAK_RATE = 22_050
RATE = 16_000
NOISE = 1e-3  # -60 dBFS
_VOICED = 0.01  # a sample at 1 % of full scale starts or ends the voiced part


def speakers() -> list[tuple[str, int, str]]:
    """(voice, pitch, split) for every speaker; the splits rotate so that the 4 validation and 4
    test speakers (of 24) each have their own voice and together every pitch."""
    roles = ("train", "train", "train", "train", "val", "test")
    return [(voice, pitch, roles[(v + 4 * p) % len(roles)])
            for v, voice in enumerate(VOICES) for p, pitch in enumerate(PITCHES)]


def speaker_id(voice: str, pitch: int) -> str:
    """An 8-hex-digit name, as the real dataset's speaker hashes."""
    return hashlib.sha1(f"{voice}/{pitch}".encode()).hexdigest()[:8]


def resample(samples: Tensor, rate_in: int, rate_out: int = RATE) -> Tensor:
    """``samples`` at ``rate_out``: antialiased linear interpolation (module docstring)."""
    n_out = round(samples.numel() * rate_out / rate_in)
    image = samples.to(torch.float32).view(1, 1, 1, -1)
    out = torch.nn.functional.interpolate(image, size=(1, n_out), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.flatten()


def read_pcm16(path: Path) -> tuple[Tensor, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, path
        frames, rate = w.readframes(w.getnframes()), w.getframerate()
    return torch.frombuffer(bytearray(frames), dtype=torch.int16).float() / 32768.0, rate


def write_pcm16(path: Path, samples: Tensor, rate: int = RATE, channels: int = 1,
                width: int = 2) -> None:
    """A PCM WAV file (16-bit mono 16 kHz unless told otherwise: the tests write bad ones)."""
    scale = 2 ** (8 * width - 1)
    ints = (samples * scale).round().clamp(-scale, scale - 1)
    dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[width]
    data = (ints + 128).to(dtype) if width == 1 else ints.to(dtype)  # 8-bit WAV is unsigned
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.numpy().tobytes())


def place(voiced: Tensor, rng: torch.Generator) -> Tensor:
    """A 1 s clip: the voiced part at a random offset, over -60 dBFS noise."""
    loud = torch.nonzero(voiced.abs() >= _VOICED).flatten()
    if loud.numel():
        voiced = voiced[int(loud[0]) : int(loud[-1]) + 1]
    voiced = voiced[:RATE]
    offset = int(torch.randint(0, RATE - voiced.numel() + 1, (1,), generator=rng))
    clip = torch.randn(RATE, generator=rng) * NOISE
    clip[offset : offset + voiced.numel()] += voiced
    return clip.clamp(-1.0, 1.0)


def speak(word: str, voice: str, pitch: int, speed: int, scratch: Path) -> Tensor:
    """``word`` by espeak-ng at 22,050 Hz (``-w``), resampled to 16 kHz."""
    out = scratch / f"{word}-{voice}-{pitch}-{speed}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(out),
                    word], check=True, capture_output=True, timeout=60)
    samples, rate = read_pcm16(out)
    assert rate == ESPEAK_RATE, (out, rate)
    return resample(samples, rate)


def build(root: Path, words: Sequence[str] = WORDS, seed: int = 0) -> dict[str, int]:
    """Write the fixture into ``root``; the number of clips per split."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    jobs = [(word, voice, pitch, speed, n, split) for word in words
            for voice, pitch, split in speakers() for n, speed in enumerate(SPEEDS)]
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(2) as pool:
        # Two at a time: each call is a separate espeak-ng process (about 15 ms).
        spoken = list(pool.map(lambda j: speak(j[0], j[1], j[2], j[3], Path(scratch)), jobs))
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, ((word, voice, pitch, _, n, split), samples) in enumerate(zip(jobs, spoken,
                                                                         strict=True)):
        entry = f"{word}/{speaker_id(voice, pitch)}_nohash_{n}.wav"
        write_pcm16(root / entry, place(samples, torch.Generator().manual_seed(seed * 100_003 + i)))
        lists[split].append(entry)
    (root / "validation_list.txt").write_text("".join(f"{e}\n" for e in lists["val"]))
    (root / "testing_list.txt").write_text("".join(f"{e}\n" for e in lists["test"]))
    return {k: len(v) for k, v in lists.items()}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.speech_fixture OUT_DIR")
    counts = build(Path(args[0]))
    print(f"{len(WORDS)} words x {len(speakers()) * len(SPEEDS)} clips into {args[0]}: "
          f"{counts['train']} train, {counts['val']} validation, {counts['test']} test")


if __name__ == "__main__":
    main()
