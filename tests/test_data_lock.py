"""Downloads into one data_dir are serialised by a lock file: fetched once, not once per trial."""

from __future__ import annotations

import functools
import multiprocessing
import time
from pathlib import Path

import pytest

from sslsearch.data.files import locked_download
from sslsearch.errors import ConfigError


def _fake_fetch(root: Path) -> None:
    """Like torchvision's ``download=True``: skip when the files are there, else fetch (slowly)."""
    if (root / "archive.bin").is_file():
        return
    time.sleep(0.3)  # long enough for every other process to reach the same check
    with (root / "fetches.log").open("a") as log:
        log.write("fetched\n")
    (root / "archive.bin").write_bytes(b"data")


def _download_in_child(root: Path) -> None:
    locked_download("fake", root, functools.partial(_fake_fetch, root))


def test_concurrent_downloads_into_one_folder_fetch_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # no re-import of torch per process
    procs = [ctx.Process(target=_download_in_child, args=(tmp_path,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (tmp_path / "fetches.log").read_text().splitlines() == ["fetched"]
    assert (tmp_path / "archive.bin").read_bytes() == b"data"


def test_the_lock_is_released_when_a_download_fails(tmp_path: Path) -> None:
    def broken() -> None:
        raise OSError("connection reset")

    with pytest.raises(ConfigError, match=r"could not download fake .*connection reset"):
        locked_download("fake", tmp_path, broken)
    # A later attempt (another trial, or a retry) is not blocked by the failed one.
    child = multiprocessing.get_context("fork").Process(target=_download_in_child,
                                                        args=(tmp_path,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert (tmp_path / "archive.bin").is_file()
