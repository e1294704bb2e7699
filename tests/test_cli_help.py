"""``--help`` is a front door too: each flag says its default once, in words (no "None")."""

from __future__ import annotations

import re

import pytest


def _blocks(text: str) -> list[str]:
    """The help of each option: from its flag line to the next flag line."""
    body = text.split("options:", 1)[1]
    return [b for b in re.split(r"\n(?=  -)", body) if b.strip()]


@pytest.mark.parametrize("command", ["run", "bench search", "sizes", "evaluate"])
def test_every_flag_states_its_default_once_and_never_none(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.bench.search_cli import build_parser as bench_parser
    from sslsearch.cli import build_parser
    from sslsearch.evaluate import build_parser as evaluate_parser
    from sslsearch.sizes import build_parser as sizes_parser

    parser = {"run": build_parser, "bench search": bench_parser, "sizes": sizes_parser,
              "evaluate": evaluate_parser}[command]()
    text = parser.format_help()
    assert "None" not in text and "%(" not in text, text
    for block in _blocks(text):
        assert block.count("default:") <= 1, block  # "default" alone may be a value's name
