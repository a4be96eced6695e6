"""Rich tables read where people read them: terminals, and CI logs where stdout is no terminal.

Without a terminal rich lays everything out in 80 columns and, when a table does not fit, breaks words
inside cells ("baselin/e recorde/d", "CRITICA/L"). Here a console without a terminal is as wide as
$COLUMNS says, else ``WIDE``; and ``print_table`` never breaks a word inside a cell there: each column is
at least as wide as its longest word, and the table is printed wider than the console when it must be.
Only columns marked ``overflow="fold"`` (image references, digests, paths: long single tokens) may break.
"""

from __future__ import annotations

import os

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

WIDE = 200  # columns of a console without a terminal when $COLUMNS is not set
FOLD_MIN = 24  # a folding column never forces the table wider than this many columns of it


def console(stderr: bool = False) -> Console:
    """Return the console for stdout (or stderr): the terminal's width, else $COLUMNS, else ``WIDE`` columns."""
    made = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not made.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        made.width = WIDE
    return made


def _longest_word(cell: object) -> int:
    if isinstance(cell, Text):
        plain = cell.plain
    elif isinstance(cell, str):
        try:
            plain = Text.from_markup(cell).plain
        except Exception:  # noqa: BLE001 - not markup after all: measure it as it is
            plain = cell
    else:
        return 0
    return max((len(word) for word in plain.split()), default=0)


def keep_words_whole(table: Table) -> None:
    """Give each column of ``table`` a minimum width of its longest word, header included.

    A folding column (``overflow="fold"``) gets at most ``FOLD_MIN``: its long tokens break there.
    """
    for column in table.columns:
        if column.no_wrap:
            continue
        longest = max([_longest_word(column.header), *(_longest_word(c) for c in column.cells)])
        if column.overflow == "fold":  # a long reference may fold, but in pieces of FOLD_MIN, not of 5
            longest = min(longest, FOLD_MIN)
        column.min_width = max(column.min_width or 0, longest)


def print_table(target: Console, table: RenderableType) -> None:
    """Print ``table`` on ``target``; without a terminal, widen the table rather than break a word in a cell.

    Anything that is not a rich Table is printed as it is.
    """
    if target.is_terminal or not isinstance(table, Table):
        target.print(table)
        return
    keep_words_whole(table)
    folding = [(c, c.max_width) for c in table.columns if c.overflow == "fold"]
    for column, limit in folding:
        column.max_width = min(limit or FOLD_MIN, FOLD_MIN)
    need = Measurement.get(target, target.options.update_width(100_000), table).minimum
    for column, limit in folding:
        column.max_width = limit
    target.print(table, width=max(target.width, need), crop=False)
