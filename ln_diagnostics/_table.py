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

import math
import re
import shutil
import textwrap
from collections.abc import Collection, Iterable, Mapping, Sequence

#: Columns are this many spaces apart.
GAP = 2
#: A wrapped column is not made narrower than this while the other columns can give way.
MIN_WRAPPED = 12
#: The width assumed when the terminal's cannot be found out (output piped to a file, CI logs).
FALLBACK_WIDTH = 100


def terminal_width(fallback: int = FALLBACK_WIDTH) -> int:
    """The console's width in columns (``$COLUMNS`` first), ``fallback`` when it is unknown."""
    return shutil.get_terminal_size((fallback, 24)).columns


def _share(natural: Sequence[int], floor: Mapping[int, int], room: int) -> dict[int, int]:
    """Widths for the columns of ``floor`` that add up to at most ``room``: shares in proportion
    to the square root of each column's natural width (a long text gets more room, a short one
    is not starved), none below its floor nor above its natural width."""
    widths: dict[int, int] = {}
    active = set(floor)
    while active:
        weight = {c: math.sqrt(natural[c]) for c in active}
        total = sum(weight.values())
        target = {c: room * weight[c] / total for c in active}
        settled = {c for c in active if not floor[c] < target[c] < natural[c]}
        if not settled:
            widths.update({c: int(target[c]) for c in active})
            spare = room - sum(widths[c] for c in active)
            for c in sorted(active, key=lambda c: natural[c] - widths[c], reverse=True)[:spare]:
                widths[c] += 1
            break
        for c in settled:
            widths[c] = natural[c] if target[c] >= natural[c] else floor[c]
            room -= widths[c]
        active -= settled
    return widths


def column_widths(
    natural: Sequence[int],
    width: int | None,
    wrap: Collection[int] = (),
    words: Sequence[int] | None = None,
) -> list[int]:
    """The width of each column so that a line fits ``width`` (``None``: natural widths).

    The ``wrap`` columns give way first: each keeps its longest word (``words``) whole when
    there is room for that (else the longest words break first), and the room is shared among
    them in proportion to the square root of their natural widths. When the other columns leave
    the ``wrap`` columns less than :data:`MIN_WRAPPED` each, every column gives way. Below one
    character per column a line cannot fit: each column is then one character wide.
    """
    if width is None or sum(natural) + GAP * (len(natural) - 1) <= width:
        return list(natural)
    words = words if words is not None else [1] * len(natural)
    room = width - GAP * (len(natural) - 1)
    fixed = sum(w for c, w in enumerate(natural) if c not in wrap)
    wrapped = [c for c in range(len(natural)) if c in wrap]
    if wrapped and room - fixed >= MIN_WRAPPED * len(wrapped):
        giving, room = wrapped, room - fixed
    else:
        giving = list(range(len(natural)))
    widths = [0 if c in giving else w for c, w in enumerate(natural)]
    floor = {c: min(natural[c], words[c]) for c in giving}
    level = max(floor.values())
    while level > 1 and sum(min(f, level) for f in floor.values()) > room:
        level -= 1  # words must break: the longest ones first
    floor = {c: min(f, level) for c, f in floor.items()}
    for c, w in _share(natural, floor, room).items():
        widths[c] = w
    return widths


#: Where a word too long for a line breaks first: after a ``.``, ``_`` or ``/`` that follows a
#: letter (layer names, tags, kinds); numbers such as ``5.75`` stay whole.
_BREAK = re.compile(r"(?<=[A-Za-z])[._/]")


class _Wrapper(textwrap.TextWrapper):
    """Whole words where they fit; a longer word breaks at :data:`_BREAK`, else anywhere."""

    def _handle_long_word(
        self, reversed_chunks: list[str], cur_line: list[str], cur_len: int, width: int
    ) -> None:
        space = max(width - cur_len, 1)
        chunk = reversed_chunks[-1]
        cut = max((m.end() for m in _BREAK.finditer(chunk, 0, space)), default=0)
        if not cut and cur_line:
            return  # no break point fits this line: the word starts the next
        cut = cut or space
        cur_line.append(chunk[:cut])
        reversed_chunks[-1] = chunk[cut:]


def _lines(cell: str, width: int) -> list[str]:
    wrapper = _Wrapper(width, break_on_hyphens=False)
    out = []
    for paragraph in cell.split("\n"):
        out += wrapper.wrap(paragraph) or [""]
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
    words = [
        max((len(word) for row in table for word in row[c].split()), default=1)
        for c in range(len(headers))
    ]
    widths = column_widths(natural, width, wrap, words)
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
