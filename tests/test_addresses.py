"""Addresses are checked before anything starts: where no Ray cluster answers, exit 2 and one line
in seconds (Ray itself waits minutes for an unreachable head)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from sslsearch.run import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


@pytest.mark.parametrize("address,says", [
    ("127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port} (Connection refused"),
    ("ray://127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
    ("nohost.invalid:6379", "no Ray cluster answers at nohost.invalid:6379"),
    ("no-port-here", "expected auto, HOST:PORT or ray://HOST:PORT"),
    ("host:99999", "expected auto, HOST:PORT or ray://HOST:PORT"),
])
def test_an_address_where_no_cluster_answers_exits_2_in_seconds(
        address: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    address, says = address.format(port=port), says.format(port=port)
    start = time.monotonic()
    assert main(["--space", "simclr", "--address", address]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert time.monotonic() - start < 15


def test_ray_address_from_the_environment_is_checked_too(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    assert main(["--space", "simclr"]) == 2
    assert "$RAY_ADDRESS 127.0.0.1:" in capsys.readouterr().err


def test_auto_without_a_started_cluster_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray/ray_current_cluster there
    assert main(["--space", "simclr", "--address", "auto"]) == 2
    assert "--address auto: no Ray cluster was started on this machine" in (
        capsys.readouterr().err)
