"""A Ray cluster's address, checked before Ray is asked to join it (Ray waits minutes on one
that does not answer). Standard library only: it runs before Ray starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sslsearch.errors import ConfigError


def check_address(address: str, given: str = "--address", timeout: float = 5.0) -> None:
    """Refuse (ConfigError, exit 2) in seconds an address where no Ray cluster answers: Ray itself
    waits minutes for an unreachable head. ``auto`` is the cluster `ray start` recorded on this
    machine; ``HOST:PORT`` a head's GCS, ``ray://HOST:PORT`` a Ray Client server. Only TCP is
    tried (the port accepts a connection), before anything else starts."""
    target = address
    if address == "auto":
        record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not record.is_file():
            raise ConfigError(f"{given} auto: no Ray cluster was started on this machine (no "
                              f"{record}); start one with `ray start --head`, or omit it for a "
                              "local Ray")
        target = record.read_text().strip()
    host, colon, port = target.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{given} {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"{given} {address}: no Ray cluster answers at {host}:{port} "
                          f"({reason} within {timeout:g} s); start it with `ray start --head`, "
                          "or omit it for a local Ray") from None
