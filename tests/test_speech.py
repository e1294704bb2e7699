"""Speech Commands (issue 34): the log-mel front end, the folder layout and its lists, every way
a folder can be malformed (one line naming the file, exit code 2 from the command line), and
augmentation-free N-pair and i-Mix learning on clips spoken by espeak-ng."""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sslsearch.data import DATASETS, TABULAR, Split, load_dataset
from sslsearch.data.audio import (
    F_MAX,
    F_MIN,
    LOG_FLOOR,
    N_FRAMES,
    N_MELS,
    fit_clip,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    read_wav,
)
from sslsearch.data.survey import dataset_shape
from sslsearch.errors import ConfigError
from tests.speech_fixture import RATE, WORDS, build, read_pcm16, speakers, write_pcm16
from tests.speech_learning import measure

ROOT = Path(__file__).resolve().parents[1]


def tone(freq: float, seconds: float = 1.0, rate: int = RATE) -> torch.Tensor:
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return (0.3 * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


def band_centres() -> torch.Tensor:
    lo, hi = hz_to_mel(torch.tensor([F_MIN, F_MAX], dtype=torch.float64)).tolist()
    return mel_to_hz(torch.linspace(lo, hi, N_MELS + 2, dtype=torch.float64))[1:-1]


# ----------------------------------------------------------------------------- the front end


def test_the_mel_filters_are_triangles_that_tile_the_band() -> None:
    fb = mel_filterbank()
    assert fb.shape == (257, N_MELS) and float(fb.min()) >= 0 and float(fb.max()) <= 1
    peaks = fb.argmax(0)
    assert bool((peaks[1:] >= peaks[:-1]).all())  # low bands first
    # Between the first and the last centre, neighbouring triangles sum to 1 at every FFT bin.
    freqs = torch.linspace(0, RATE / 2, 257, dtype=torch.float64)
    centres = band_centres()
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    torch.testing.assert_close(fb[inside].sum(1), torch.ones(int(inside.sum()),
                                                             dtype=torch.float64))


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3500.0])
def test_a_tone_lights_the_band_nearest_its_frequency(freq: float) -> None:
    spec = log_mel(tone(freq)[None])
    assert spec.shape == (1, N_MELS, N_FRAMES) == (1, 40, 101)
    loudest = int(spec[0, :, 10:-10].mean(1).argmax())
    assert loudest == int((band_centres() - freq).abs().argmin())


def test_silence_is_the_log_floor_and_clips_are_padded_or_cut_to_one_second() -> None:
    torch.testing.assert_close(log_mel(torch.zeros(2, RATE)),
                               torch.full((2, N_MELS, N_FRAMES), math.log(LOG_FLOOR)))
    short, long = torch.ones(100), torch.arange(RATE + 50, dtype=torch.float32)
    assert fit_clip(short).shape == (RATE,) and float(fit_clip(short)[100:].abs().sum()) == 0
    assert torch.equal(fit_clip(long), long[:RATE])


def test_a_wav_reads_back_its_16_bit_samples(tmp_path: Path) -> None:
    samples = torch.tensor([0.0, 0.5, -0.5, -1.0, 32767 / 32768])
    write_pcm16(tmp_path / "a.wav", samples)
    torch.testing.assert_close(read_wav(tmp_path / "a.wav"), samples)


# ----------------------------------------------------------------------------- the layout


def tone_folder(root: Path) -> Path:
    """Two words as tones (no synthesiser needed): 6 clips each, clip 4 validation, 5 test; a
    ``_background_noise_`` folder and a README that are not words."""
    for word, base in (("high", 2000.0), ("low", 300.0)):
        for k in range(6):
            write_pcm16(root / word / f"s{k}_nohash_0.wav", tone(base * (1 + 0.03 * k), 0.8))
    write_pcm16(root / "_background_noise_" / "hum.wav", tone(50.0, 3.0))
    (root / "README.md").write_text("not a word\n")
    (root / "validation_list.txt").write_text("high/s4_nohash_0.wav\nlow/s4_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("high/s5_nohash_0.wav\n\nlow/s5_nohash_0.wav\n")
    return root


def test_the_lists_are_the_validation_and_test_splits(tmp_path: Path) -> None:
    assert "speech_commands" in DATASETS and "speech_commands" in TABULAR
    bundle = load_dataset("speech_commands", data_dir=tone_folder(tmp_path), val_fraction=0.5)
    assert (bundle.kind, bundle.num_classes, bundle.in_channels) == ("tabular", 2, 40 * 101)
    train, val, test = bundle.train, bundle.val, bundle.test
    assert isinstance(train, Split) and isinstance(val, Split) and isinstance(test, Split)
    # val_fraction does not apply: the lists fix the splits (words sorted: high 0, low 1).
    assert (len(train), len(val), len(test)) == (8, 2, 2)
    assert train.y.tolist() == [0] * 4 + [1] * 4 and val.y.tolist() == test.y.tolist() == [0, 1]
    # Standardised with the training split's statistics.
    torch.testing.assert_close(train.x.mean(0), torch.zeros(4040), atol=1e-5, rtol=0)
    # Another seed draws no other validation or test split.
    again = load_dataset("speech_commands", data_dir=tmp_path, seed=3)
    assert torch.equal(again.val.x, val.x) and torch.equal(again.test.x, test.x)


def test_max_train_samples_draws_a_stratified_subset(tmp_path: Path) -> None:
    bundle = load_dataset("speech_commands", data_dir=tone_folder(tmp_path), max_train_samples=4)
    assert torch.bincount(bundle.train.y).tolist() == [2, 2] and len(bundle.val) == 2
    with pytest.raises(ConfigError, match="image_size 32 does not apply to speech_commands"):
        load_dataset("speech_commands", data_dir=tmp_path, image_size=32)


def float_wav(path: Path) -> None:
    """A valid IEEE-float WAV (format 3), which is not PCM."""
    data = struct.pack("<4f", 0.0, 0.1, -0.1, 0.0)
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)


def link_out(path: Path) -> None:
    """``path`` replaced by a link to a valid clip outside the data folder."""
    outside = path.parents[2] / "elsewhere.wav"
    write_pcm16(outside, tone(500))
    path.unlink()
    path.symlink_to(outside)


CLIP = "high/s0_nohash_0.wav"
BAD: dict[str, tuple[Callable[[Path], object], str, str]] = {
    # case: (how to break the folder, the file the message names, what it says)
    "no validation list": (lambda r: (r / "validation_list.txt").unlink(),
                           "", "is missing validation_list.txt"),
    "no testing list": (lambda r: (r / "testing_list.txt").unlink(),
                        "", "is missing testing_list.txt"),
    "a listed clip is absent": (
        lambda r: (r / "testing_list.txt").write_text("low/s5_nohash_0.wav\nlow/ghost.wav\n"),
        "testing_list.txt", "line 2 names 'low/ghost.wav', which is not a file"),
    "a listed path leaves the folder": (
        lambda r: (r / "validation_list.txt").write_text("../high/s4_nohash_0.wav\n"),
        "validation_list.txt", "line 1 names '../high/s4_nohash_0.wav'; expected <word>/"),
    "a clip in both lists": (
        lambda r: (r / "validation_list.txt").write_text("low/s5_nohash_0.wav\n"),
        "validation_list.txt", "both list 'low/s5_nohash_0.wav'"),
    "not a wav": (lambda r: (r / CLIP).write_bytes(b"ID3\x03 an mp3, say"), CLIP,
                  "is not a readable PCM WAV file"),
    "an empty file": (lambda r: (r / CLIP).write_bytes(b""), CLIP, "is not a readable PCM WAV"),
    "float, not PCM": (lambda r: float_wav(r / CLIP), CLIP, "unknown format: 3"),
    "8 kHz": (lambda r: write_pcm16(r / CLIP, tone(500, 1, 8000), rate=8000), CLIP,
              "is sampled at 8000 Hz; expected 16000 Hz"),
    "stereo": (lambda r: write_pcm16(r / CLIP, tone(500).repeat_interleave(2), channels=2), CLIP,
               "has 2 channels; expected mono"),
    "8-bit": (lambda r: write_pcm16(r / CLIP, tone(500), width=1), CLIP,
              "has 8-bit samples; expected 16-bit PCM"),
    "truncated": (lambda r: (r / CLIP).write_bytes((r / CLIP).read_bytes()[:-100]), CLIP,
                  "holds 25500 bytes of samples but its header declares 25600; the file is"),
    "a clip links outside": (lambda r: link_out(r / CLIP), CLIP, "links outside data_dir"),
    "one word": (lambda r: shutil.rmtree(r / "low"), "", "has 1 word folder (high/)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_folder_is_one_line_naming_the_file(case: str, tmp_path: Path) -> None:
    root = tone_folder(tmp_path / "sc")
    breaks, names, says = BAD[case]
    breaks(root)
    with pytest.raises(ConfigError) as info:
        load_dataset("speech_commands", data_dir=root)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert says in message and str(root / names) in message, message


def test_the_pre_flight_refuses_a_malformed_folder_before_any_trial(tmp_path: Path) -> None:
    root = tone_folder(tmp_path / "sc")
    assert dataset_shape("speech_commands", str(root), False) is None  # nothing more to survey
    write_pcm16(root / "low" / "s5_nohash_0.wav", tone(500, 1, 8000), rate=8000)
    with pytest.raises(ConfigError, match=r"low/s5_nohash_0\.wav is sampled at 8000 Hz"):
        dataset_shape("speech_commands", str(root), False)
    with pytest.raises(ConfigError, match="'speech_commands' cannot be downloaded"):
        dataset_shape("speech_commands", str(root), True)


def test_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    root = tone_folder(tmp_path / "sc")
    write_pcm16(root / CLIP, tone(500).repeat_interleave(2), channels=2)
    out = subprocess.run(
        [sys.executable, "-m", "sslsearch.train", "--dataset", "speech_commands", "--data-dir",
         str(root), "--method", "imix", "--epochs", "1", "--set", "backbone=mlp"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0] == f"error: {root / CLIP} has 2 channels; expected mono (1)"


# ----------------------------------------------------------------------------- spoken words


@pytest.fixture(scope="session")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The espeak-ng fixture (tests/speech_fixture.py), synthesised once per session."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): the speech "
                    "fixture is spoken by it")
    root = tmp_path_factory.mktemp("speech_commands")
    build(root)
    return root


def test_the_spoken_fixture_has_the_speech_commands_layout(spoken: Path) -> None:
    n_speakers = len(speakers())  # 24, each saying every word at 2 speeds
    val = (spoken / "validation_list.txt").read_text().split()
    test = (spoken / "testing_list.txt").read_text().split()
    assert sorted(p.name for p in spoken.iterdir() if p.is_dir()) == sorted(WORDS)
    assert len(val) == len(test) == len(WORDS) * 4 * 2
    samples, rate = read_pcm16(spoken / test[0])
    assert (rate, samples.numel()) == (RATE, RATE) and float(samples.abs().max()) > 0.1
    bundle = load_dataset("speech_commands", data_dir=spoken)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (
        len(WORDS) * n_speakers * 2 - 2 * len(val), len(val), len(test))
    assert torch.bincount(bundle.test.y).tolist() == [8] * len(WORDS)


# Measured with python -m tests.speech_learning --seeds 0,1,2,3,4 (SPEECH, one thread, 2026-12-07;
# docs/speech.md), gain over the same encoder at random init, smallest of 5 seeds, in points:
#   npair: val kNN +12.5, test kNN +10.5, test probe +16.6
#   imix:  val kNN +12.5, test kNN +12.6, test probe +20.8
# One clip of the 48-clip validation or test split is 2.1 points: the margin asks for 3 clips.
MARGIN = 0.06


@pytest.mark.parametrize("method", ["npair", "imix"])
def test_pretraining_without_augmentation_beats_random_init(spoken: Path, method: str) -> None:
    got = measure(method, spoken)
    for metric, acc in got.items():
        assert acc["after"] >= acc["init"] + MARGIN, (metric, acc)
