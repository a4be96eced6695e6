"""Tables read in CI logs (no terminal): wide enough, and no word broken inside a cell."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from acgs_remediate import tables

WORDS = ("baseline recorded", "CRITICAL", "20.10.24+dfsg1 graphdriver", "Development tools in production")


def _fleet_like() -> Table:
    t = Table(title="Fleet")
    for col in ("host", "engine", "images on disk", "summed sizes", "vs baseline", "status", "notes"):
        t.add_column(col)
    t.add_column("image", overflow="fold")
    for i in range(3):
        t.add_row(
            f"sb-h0{i}", WORDS[2], "6.59GB", "8.85GB", WORDS[0], f"[red]{WORDS[1]}[/]", WORDS[3],
            "nvcr.io/nvidia/tritonserver:24.10-py3-with-a-long-tail",
        )  # fmt: skip
    return t


def _printed(width: int) -> str:
    buffer = io.StringIO()
    target = Console(file=buffer, width=width, color_system=None, highlight=False)
    assert not target.is_terminal
    tables.print_table(target, _fleet_like())
    return buffer.getvalue()


@pytest.mark.parametrize("width", [40, 80, 200])
def test_no_word_is_broken_inside_a_cell_whatever_the_width(width):
    text = _printed(width).partition("┡")[2]  # the rows, below the header
    for word in ("CRITICAL", "baseline", "recorded", "graphdriver", "20.10.24+dfsg1", "Development", "production"):
        assert text.count(word) == 3, f"{word!r} was split at width {width}:\n{text}"  # once per row
    if width == 200:  # room enough: every row on one line
        rows = [line for line in text.splitlines() if "sb-h0" in line]
        assert len(rows) == 3 and all("baseline recorded" in row and "CRITICAL" in row for row in rows)


def test_long_references_may_fold_but_in_readable_pieces():
    text = _printed(40)
    assert "nvcr.io/nvidia/tritonser" in text  # FOLD_MIN characters per piece, not a few


def test_a_console_without_a_terminal_is_wide_unless_columns_says_otherwise(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert tables.console().width == tables.WIDE  # pytest captures stdout: no terminal
    monkeypatch.setenv("COLUMNS", "132")
    assert tables.console().width == 132
