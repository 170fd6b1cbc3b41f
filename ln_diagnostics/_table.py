"""The one table renderer: aligned plain text for a console (wrapped to a width when asked) and
markdown for TensorBoard's Text tab. Standard library only.

A plain-text cell may hold several paragraphs separated by ``"\\n"``; each starts on a line of
its own. Columns are left-aligned, two spaces apart, and lines carry no trailing blanks.

Example:
    >>> print(text_table(["NAME", "NOTE"], [["net.0", "a note long enough to be wrapped"]],
    ...                  width=25, wrap=[1]))
    NAME   NOTE
    net.0  a note long enough
           to be wrapped
    >>> print(markdown_table(["a", "b"], [["x|y", "z"]]))
    | a | b |
    |---|---|
    | x\\|y | z |
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Collection, Iterable, Sequence

#: Columns are this many spaces apart.
GAP = 2
#: A wrapped column is not made narrower than this while the other columns can give way.
MIN_WRAPPED = 12
#: The width assumed when the terminal's cannot be found out (output piped to a file, CI logs).
FALLBACK_WIDTH = 100


def terminal_width(fallback: int = FALLBACK_WIDTH) -> int:
    """The console's width in columns (``$COLUMNS`` first), ``fallback`` when it is unknown."""
    return shutil.get_terminal_size((fallback, 24)).columns


def _fill(widths: list[int], natural: Sequence[int], columns: Sequence[int], room: int) -> None:
    """Share ``room`` among ``columns``: none wider than its natural width, the narrow ones first
    in full, what is left evenly among the rest (at least 1 each)."""
    left = sorted(columns, key=lambda c: natural[c])
    while left:
        share = max(1, room // len(left))
        column = left.pop(0)
        widths[column] = min(natural[column], share)
        room -= widths[column]
    spare = room
    for column in sorted(columns, key=lambda c: natural[c] - widths[c], reverse=True):
        extra = min(spare, natural[column] - widths[column])
        widths[column] += max(0, extra)
        spare -= max(0, extra)


def column_widths(
    natural: Sequence[int], width: int | None, wrap: Collection[int] = ()
) -> list[int]:
    """The width of each column so that a line fits ``width`` (``None``: natural widths).

    The ``wrap`` columns give way first; when the other columns leave them less than
    :data:`MIN_WRAPPED` each, every column gives way. Below one character per column a line
    cannot fit: each column is then one character wide.
    """
    widths = list(natural)
    if width is None or sum(natural) + GAP * (len(natural) - 1) <= width:
        return widths
    room = width - GAP * (len(natural) - 1)
    fixed = sum(w for c, w in enumerate(natural) if c not in wrap)
    wrapped = [c for c in range(len(natural)) if c in wrap]
    if wrapped and room - fixed >= MIN_WRAPPED * len(wrapped):
        _fill(widths, natural, wrapped, room - fixed)
    else:
        _fill(widths, natural, range(len(natural)), room)
    return widths


def _lines(cell: str, width: int) -> list[str]:
    out = []
    for paragraph in cell.split("\n"):
        out += textwrap.wrap(paragraph, width, break_on_hyphens=False) or [""]
    return out


def text_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    width: int | None = None,
    wrap: Collection[int] = (),
    rule: bool = False,
) -> str:
    """An aligned plain-text table.

    Args:
        headers: the column headers.
        rows: the rows, one string per column.
        width: no line is wider than this (see :func:`column_widths`); ``None``: no limit.
        wrap: the indices of the columns wrapped first (long text: messages, advice, names).
        rule: a line of dashes under the headers.

    Returns:
        The table, lines joined by ``"\\n"``.
    """
    table = [list(headers), *(list(row) for row in rows)]
    natural = [
        max(len(line) for row in table for line in row[c].split("\n")) for c in range(len(headers))
    ]
    widths = column_widths(natural, width, wrap)
    out = []
    for index, row in enumerate(table):
        if width is None or widths == natural:
            cells = [cell.split("\n") for cell in row]
        else:
            cells = [_lines(cell, w) for cell, w in zip(row, widths, strict=True)]
        for k in range(max(len(lines) for lines in cells)):
            parts = [lines[k] if k < len(lines) else "" for lines in cells]
            out.append((" " * GAP).join(p.ljust(w) for p, w in zip(parts, widths, strict=True)))
        if rule and index == 0:
            out.append((" " * GAP).join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def markdown_cell(text: str) -> str:
    """A cell of a markdown table: ``|`` escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table (cells escaped with :func:`markdown_cell`)."""
    lines = ["| " + " | ".join(map(markdown_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows)
    return "\n".join(lines)
