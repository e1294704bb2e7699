"""The console stays the sweep's own: a Ray worker's teardown prints no traceback."""

from __future__ import annotations

import sys

import pytest

from sslsearch import console


def test_an_exit_inside_a_gc_callback_is_quiet_and_other_errors_still_print(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test

    class ExitsInDel:  # what Ray's SIGTERM handler does when it lands in a __del__
        def __del__(self) -> None:
            raise SystemExit(1)

    class FailsInDel:
        def __del__(self) -> None:
            raise ValueError("a real error")

    console.quiet_worker_teardown()
    ExitsInDel()
    assert capsys.readouterr().err == ""
    FailsInDel()
    err = capsys.readouterr().err
    assert "Exception ignored in" in err and "ValueError: a real error" in err
