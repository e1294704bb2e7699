"""Speech Commands (Warden, 2018), the i-Mix paper's speech benchmark (dataset
``speech_commands``), read from its own folder layout and turned into a feature table.

The layout: ``data_dir/<word>/<clip>.wav`` (one folder per word; folders starting with ``_``, such
as ``_background_noise_``, are not words), and ``validation_list.txt`` / ``testing_list.txt``,
each a list of ``<word>/<clip>.wav`` paths. Those lists define the validation and test splits
(they keep each speaker in one split); every other clip trains. No validation split is drawn,
so ``val_fraction`` does not apply; ``max_train_samples`` draws a stratified training subset.

Why a feature table (``kind: tabular``, the ``mlp`` backbone) and not a 1-channel image: every
image path of the package assumes pixels in 0..255 (uint8 storage, per-channel statistics, the
raw-pixel baseline's ``/255``) and its augmentations (crops, flips, colour jitter) are image
knowledge that means nothing, or harm, on a spectrogram. A table takes the log-mel values as
they are, standardised per feature with the training split's statistics, and gets no
augmentation at all: i-Mix's domain-agnostic setting, the path CovType already takes
(``experiments/imix_covtype.yaml``), where the two views are identical and only mixing
regularises (N-pair then learns by telling the clips of a batch apart). Each clip is
:mod:`sslsearch.data.audio`'s 40 x 101 log-mel spectrogram, flattened: 4,040 features.

Every problem with the layout (a list missing or naming a file that is not there, a WAV that is
unreadable, not PCM, not mono or not 16 kHz) is a one-line ConfigError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from sslsearch.data.assemble import Raw
from sslsearch.data.audio import (
    CLIP_SAMPLES,
    N_FRAMES,
    N_MELS,
    check_wav,
    fit_clip,
    log_mel,
    read_wav,
)
from sslsearch.data.files import missing, one_line, prepare_dir
from sslsearch.errors import ConfigError

NAME = "speech_commands"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
LAYOUT = (f"<word>/<clip>.wav (16 kHz mono 16-bit PCM), {VALIDATION_LIST} and {TESTING_LIST} "
          "(Speech Commands)")
N_FEATURES = N_MELS * N_FRAMES
_LIST_HINT = "it lists the split's clips, one <word>/<clip>.wav a line"
_READ_CHUNK = 512  # clips decoded, then turned into features, at once: bounds the float waves


def word_folders(root: Path) -> list[str]:
    """The word folders of ``root``, sorted (a word's label is its index here)."""
    try:
        names = sorted(e.name for e in os.scandir(root)
                       if e.is_dir() and not e.name.startswith(("_", ".")))
    except OSError as err:
        raise ConfigError(f"data_dir '{root}' for {NAME} cannot be listed: "
                          f"{one_line(err)}") from err
    if len(names) < 2:
        found = f" ({names[0]}/)" if names else ""
        raise ConfigError(f"data_dir '{root}' for {NAME} has {len(names)} word folder{found}; "
                          f"expected at least two: {LAYOUT}")
    return names


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (links followed) stays inside ``root``: a link out of the data folder is
    not a clip of the dataset, and must not make the loader read whatever it points at."""
    return path.resolve().is_relative_to(root.resolve())


def read_list(root: Path, name: str, words: Sequence[str]) -> list[str]:
    """The ``<word>/<clip>.wav`` entries of list file ``name``, each checked to be a clip of a
    word folder that exists (a ConfigError names the list, its line and the entry otherwise)."""
    path = root / name
    if not path.is_file():  # also refuses a FIFO or a device, which reading would block on
        raise missing(NAME, root, name, LAYOUT, _LIST_HINT)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a readable UTF-8 text file: {one_line(err)}") from err
    known = set(words)
    entries = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        parts = entry.split("/")
        if (len(parts) != 2 or parts[0] not in known or not parts[1].lower().endswith(".wav")
                or parts[1] in ("", ".", "..")):
            raise ConfigError(f"{path} line {number} names {entry!r}; expected <word>/<clip>.wav "
                              f"with <word> one of the {len(words)} word folders")
        clip = root / parts[0] / parts[1]
        if not clip.is_file() or not _inside(root, clip):
            raise ConfigError(f"{path} line {number} names {entry!r}, which is not a file in "
                              f"data_dir '{root}'")
        entries.append(entry)
    if not entries:
        raise ConfigError(f"{path} lists no clip; expected one <word>/<clip>.wav a line")
    return entries


def training_clips(root: Path, words: Sequence[str], held: set[str]) -> list[str]:
    """Every ``<word>/<clip>.wav`` not in ``held`` (the validation and test lists), sorted."""
    clips = []
    for word in words:
        folder = root / word
        try:
            found = sorted((e.name, e.is_symlink()) for e in os.scandir(folder)
                           if e.name.lower().endswith(".wav") and e.is_file())
        except OSError as err:
            raise ConfigError(f"{folder} cannot be listed: {one_line(err)}") from err
        # Resolving every path would cost a few system calls per clip (105,829 in v0.02): the
        # folder once, then only the clips that are links.
        for path, link in [(folder, folder.is_symlink()),
                           *((folder / name, is_link) for name, is_link in found)]:
            if link and not _inside(root, path):
                raise ConfigError(f"{path} links outside data_dir '{root}'; expected the clips "
                                  "themselves")
        clips += [f"{word}/{name}" for name, _ in found if f"{word}/{name}" not in held]
    return clips


def features(root: Path, entries: Sequence[str]) -> Tensor:
    """The flattened log-mel spectrograms (``N x N_FEATURES`` float32) of ``entries``."""
    out = torch.empty((len(entries), N_FEATURES))
    for start in range(0, len(entries), _READ_CHUNK):
        chunk = entries[start : start + _READ_CHUNK]
        clips = torch.stack([fit_clip(read_wav(root / e), CLIP_SAMPLES) for e in chunk])
        out[start : start + len(chunk)] = log_mel(clips).flatten(1)
    return out


def labels(entries: Sequence[str], words: Sequence[str]) -> Tensor:
    index = {w: i for i, w in enumerate(words)}
    return torch.tensor([index[e.split("/", 1)[0]] for e in entries], dtype=torch.int64)


def splits(root: Path, download: bool) -> tuple[list[str], list[str], list[str], list[str]]:
    """The word folders and the training, validation and test clips of ``root``, the layout
    checked (module docstring); no WAV is opened."""
    if download:
        raise ConfigError(f"dataset {NAME!r} cannot be downloaded here; set download: false and "
                          f"point data_dir at an unpacked copy: {LAYOUT}")
    prepare_dir(NAME, root, False, LAYOUT, "unpack speech_commands_v0.02.tar.gz there")
    for name in (VALIDATION_LIST, TESTING_LIST):  # first: an empty folder is named as such
        if not (root / name).is_file():
            raise missing(NAME, root, name, LAYOUT, _LIST_HINT)
    words = word_folders(root)
    val = read_list(root, VALIDATION_LIST, words)
    test = read_list(root, TESTING_LIST, words)
    both = set(val) & set(test)
    if both:
        raise ConfigError(f"{root / VALIDATION_LIST} and {root / TESTING_LIST} both list "
                          f"{min(both)!r}; a clip belongs to one split")
    train = training_clips(root, words, set(val) | set(test))
    if not train:
        raise ConfigError(f"data_dir '{root}' for {NAME} has no training clip: every WAV is in "
                          f"{VALIDATION_LIST} or {TESTING_LIST}")
    return words, train, val, test


def survey_speech_commands(root: Path, download: bool) -> None:
    """Every check :func:`read_speech_commands` makes before it decodes a sample: the layout,
    the lists and each WAV's header (the driver's pre-flight, before any trial starts)."""
    _, train, val, test = splits(root, download)
    for entry in (*train, *val, *test):
        check_wav(root / entry)


def read_speech_commands(root: Path, download: bool) -> Raw:
    """The three splits of the Speech Commands folder ``root`` as log-mel feature tables."""
    words, train, val, test = splits(root, download)
    return Raw(features(root, train), labels(train, words), features(root, test),
               labels(test, words), num_classes=len(words), val_x=features(root, val),
               val_y=labels(val, words))
