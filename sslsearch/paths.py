"""Where a command may write and what it may read back: the folder a user-given ``--name`` makes
inside the results folder (never outside it), and the ownership check before a sweep's saved
state is unpickled or its outbox replayed. Standard library only, like :mod:`sslsearch.schema`,
beside which it sits on the ground floor."""

from __future__ import annotations

import os
from pathlib import Path

from sslsearch.errors import ConfigError


def results_folder(name: str, storage: str | Path, flag: str = "--name") -> Path:
    """``storage / name`` for a user-given ``--name`` (or ``flag``), which must stay one plain
    folder inside the results folder ``storage``: no separators, no ``..``, not absolute, no
    symlink out."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
           or Path(name).is_absolute() or name.strip() != name)
    if bad:
        raise ConfigError(f"{flag} {name!r}: must be a plain folder name inside the results "
                          "folder (no '/', '\\', '..', absolute path or surrounding spaces)")
    folder = Path(storage) / name
    if folder.resolve().parent != Path(storage).resolve():
        raise ConfigError(f"{flag} {name!r}: leads out of the results folder {storage}")
    return folder


def check_owned(path: Path, context: str, action: str) -> None:
    """Refuse (ConfigError) to ``action`` a file or folder that another user owns or anyone may
    write to: its content would act with our rights (unpickled state, replayed uploads)."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"{context}: {path.name} is owned by another user (uid {st.st_uid}); "
                          f"refusing to {action} it")
    if st.st_mode & 0o002:
        raise ConfigError(f"{context}: {path.name} is world-writable; refusing to {action} it")
