"""Speech as numbers: 16-bit PCM WAV files read with the standard library's :mod:`wave`, and their
log-mel spectrograms computed with torch alone.

Why these two choices: torchaudio and soundfile would each add a native dependency (and
torchaudio one pinned to torch's exact version) for what ``wave`` and ``torch.stft`` already do,
and the training loop must import on a machine that has only torch. Only the format Speech
Commands ships is accepted (mono, 16 kHz, 16-bit PCM); anything else is refused with a one-line
:class:`~sslsearch.errors.ConfigError` naming the file, never resampled or mixed down in silence.

The features follow the usual keyword-spotting front end (Warden, 2018; the i-Mix paper's Speech
Commands input is a spectrogram too): 25 ms Hann windows every 10 ms, a 512-point FFT, 40
triangular mel bands (HTK mel scale, 20 Hz to 8 kHz), ``log(mel + 1e-6)``, on a clip padded or
cut to 1 s: 40 bands x 101 frames.
"""

from __future__ import annotations

import functools
import sys
import wave
from pathlib import Path

import torch
from torch import Tensor

from sslsearch.data.files import one_line
from sslsearch.errors import ConfigError

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # every clip padded (with silence, at the end) or cut to 1 s
N_MELS = 40
WIN_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms
N_FFT = 512  # the next power of two above the window: the window is zero-padded to it
F_MIN, F_MAX = 20.0, SAMPLE_RATE / 2
LOG_FLOOR = 1e-6  # log(mel + floor): digital silence stays finite
N_FRAMES = 1 + CLIP_SAMPLES // HOP_LENGTH  # 101 frames of a 1 s clip (torch.stft, center=True)
_CHUNK = 512  # clips per STFT: bounds the complex spectrogram's memory on the full dataset


def _checked(path: Path, w: wave.Wave_read) -> None:
    """A ConfigError unless the open file ``w`` is mono 16 kHz 16-bit PCM."""
    if w.getcomptype() != "NONE":  # wave reads PCM only today; this guards its future
        raise ConfigError(f"{path} is compressed ({w.getcomptype()}); expected 16-bit PCM")
    if w.getnchannels() != 1:
        raise ConfigError(f"{path} has {w.getnchannels()} channels; expected mono (1)")
    if w.getsampwidth() != 2:
        raise ConfigError(f"{path} has {8 * w.getsampwidth()}-bit samples; expected 16-bit PCM")
    if w.getframerate() != SAMPLE_RATE:
        raise ConfigError(f"{path} is sampled at {w.getframerate()} Hz; expected {SAMPLE_RATE} Hz")


def _read(path: Path, samples: bool) -> bytes:
    """The checked file's sample bytes (``b""`` when ``samples`` is false: its header alone)."""
    try:
        with wave.open(str(path), "rb") as w:
            _checked(path, w)
            if not samples:
                return b""
            declared = w.getnframes()
            frames = w.readframes(declared)
    except ConfigError:  # a ValueError too: not to be taken for an unreadable file below
        raise
    except (wave.Error, EOFError, OSError, ValueError) as err:
        # wave.Error covers a missing RIFF header and non-PCM formats (e.g. "unknown format: 3",
        # IEEE float); EOFError a file cut inside its header.
        raise ConfigError(f"{path} is not a readable PCM WAV file: {one_line(err)}") from err
    if len(frames) != 2 * declared:
        raise ConfigError(f"{path} holds {len(frames)} bytes of samples but its header declares "
                          f"{2 * declared}; the file is truncated")
    return frames


def check_wav(path: Path) -> None:
    """:func:`read_wav`'s checks of the header alone (the driver's pre-flight: no sample read)."""
    _read(path, samples=False)


def read_wav(path: Path) -> Tensor:
    """The samples of a mono 16 kHz 16-bit PCM WAV file as float32 in [-1, 1); a ConfigError of
    one line names the file and what is wrong with it."""
    frames = _read(path, samples=True)
    if not frames:
        return torch.zeros(0)
    raw = torch.frombuffer(bytearray(frames), dtype=torch.uint8)
    if sys.byteorder == "big":  # WAV is little-endian: swap each sample's two bytes
        raw = raw.view(-1, 2).flip(1).reshape(-1)
    return raw.view(torch.int16).to(torch.float32) / 32768.0


def fit_clip(samples: Tensor, length: int = CLIP_SAMPLES) -> Tensor:
    """``samples`` padded with silence at the end, or cut, to ``length``."""
    if samples.numel() >= length:
        return samples[:length]
    return torch.nn.functional.pad(samples, (0, length - samples.numel()))


def hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # HTK's mel scale


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.cache  # one per setting: built once a process
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> Tensor:
    """Triangular mel filters, ``(n_fft // 2 + 1) x n_mels`` (float64): filter ``m`` rises from
    0 at mel point ``m`` to 1 at point ``m + 1`` and falls back to 0 at ``m + 2``, the
    ``n_mels + 2`` points evenly spaced on the mel scale from ``f_min`` to ``f_max``, and is
    evaluated at each FFT bin's frequency (torchaudio's ``melscale_fbanks`` with ``norm=None``,
    HTK scale)."""
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = torch.tensor([f_min, f_max], dtype=torch.float64)
    lo, hi = hz_to_mel(edges).tolist()
    points = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64))
    left, centre, right = points[:-2], points[1:-1], points[2:]
    f = freqs[:, None]
    rising = (f - left) / (centre - left)
    falling = (right - f) / (right - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(clips: Tensor) -> Tensor:
    """Log-mel spectrograms ``N x N_MELS x N_FRAMES`` (float32) of ``N x CLIP_SAMPLES`` clips,
    in chunks of :data:`_CHUNK` clips so the complex spectrogram stays small."""
    window = torch.hann_window(WIN_LENGTH, dtype=torch.float32)
    fbank = mel_filterbank().to(torch.float32)
    out = torch.empty((clips.shape[0], N_MELS, 1 + clips.shape[1] // HOP_LENGTH))
    for start in range(0, clips.shape[0], _CHUNK):
        spec = torch.stft(clips[start : start + _CHUNK].to(torch.float32), N_FFT,
                          hop_length=HOP_LENGTH, win_length=WIN_LENGTH, window=window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real**2 + spec.imag**2  # N x freq x frames
        mel = torch.einsum("nft,fm->nmt", power, fbank)
        out[start : start + _CHUNK] = torch.log(mel + LOG_FLOOR)
    return out

