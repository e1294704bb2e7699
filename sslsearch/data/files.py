"""A dataset's folder: checked before reading, created and locked for downloads, and the one-line
errors for what is missing."""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from sslsearch.errors import ConfigError


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def need_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ConfigError(
            f"dataset {name!r} needs data_dir: the folder that holds (or, with download: true, "
            "will hold) its files"
        )
    return root


def prepare_dir(
    name: str, root: Path, download: bool, expected: str, hint: str = "or pass download: true"
) -> None:
    """Fail early on a data_dir that is absent or not a folder; create it when downloading."""
    if root.is_dir():
        return
    if root.exists():
        raise ConfigError(f"data_dir '{root}' for {name} is not a directory; expected {expected}")
    if not download:
        raise ConfigError(
            f"data_dir '{root}' for {name} does not exist; expected {expected} ({hint})"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"data_dir '{root}' for {name} cannot be created: {one_line(err)}"
        ) from err


def missing(name: str, root: Path, what: str, expected: str, hint: str) -> ConfigError:
    """The error for a data_dir lacking ``what`` (one file) out of ``expected`` (the layout)."""
    if root.is_dir() and not any(root.iterdir()):
        return ConfigError(f"data_dir '{root}' for {name} is empty; expected {expected} ({hint})")
    return ConfigError(f"data_dir '{root}' for {name} is missing {what} ({hint})")


DOWNLOAD_LOCK = ".sslsearch-download.lock"


@contextlib.contextmanager
def download_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.sslsearch-download.lock`` (blocking).

    Trials starting together on one node (or on several nodes sharing ``data_dir`` over NFS, where
    POSIX locks reach the server) would each fetch the same archive into the same folder; under the
    lock the first one downloads and the others, finding the files checked and in place, do not.
    """
    import fcntl  # POSIX only, like Ray's multi-node support

    with open(root / DOWNLOAD_LOCK, "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def locked_download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Run a download into ``root`` under :func:`download_lock`, once per folder at a time,
    turning its failures into one-line errors. ``fetch`` must skip files already present and
    verified (torchvision's ``download=True`` and scikit-learn's fetchers do)."""
    try:
        with download_lock(root):
            fetch()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(
            f"could not download {name} into data_dir '{root}': {one_line(err)}"
        ) from err
