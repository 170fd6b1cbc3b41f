"""Depth × step heat maps rendered to RGB arrays without a plotting library.

Rows are layers in forward order (input at the top), columns are logging steps, colour is the
value (viridis: dark purple = low, yellow = high). Vanishing gradients show as a dark band in the
rows toward the input. Cells without a value (a layer that produced no gradient at that step, a
non-finite value) are drawn in :data:`NAN_COLOR`. The picture carries its own title, layer names,
step axis and a colour bar, drawn with a built-in 5×7 bitmap font, so TensorBoard's image
dashboard shows it as is.

Everything here is a pure function from numbers to a ``uint8`` array of shape ``(H, W, 3)``; write
it with :func:`ln_diagnostics.tensorboard.writer.image_summary`.

Example:
    >>> image = render_heatmap(
    ...     [[-4.0, -3.5], [-1.0, -0.5]], row_labels=["net.0", "net.2"], steps=[0, 10],
    ...     title="log10 backprop norm")
    >>> image.dtype, image.shape[2]
    (dtype('uint8'), 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np

__all__ = [
    "NAN_COLOR",
    "VIRIDIS",
    "colorize",
    "draw_text",
    "render_heatmap",
    "text_width",
    "truncate_left",
]

#: Viridis sampled at 16 evenly spaced points; colours in between are interpolated linearly.
VIRIDIS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84),
    (72, 26, 108),
    (71, 47, 125),
    (65, 68, 135),
    (57, 86, 140),
    (49, 104, 142),
    (42, 120, 142),
    (35, 136, 142),
    (31, 152, 139),
    (34, 168, 132),
    (53, 183, 121),
    (84, 197, 104),
    (122, 209, 81),
    (165, 219, 54),
    (210, 226, 27),
    (253, 231, 37),
)
#: Colour of cells without a finite value (no viridis colour is grey).
NAN_COLOR: tuple[int, int, int] = (150, 150, 150)
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
INK: tuple[int, int, int] = (20, 20, 20)

GLYPH_W, GLYPH_H = 5, 7
_PAD = 8
_MIN_HEAT_H = 126

# 5×7 glyphs, one string of 7 rows × 5 columns each ("#" = ink). Characters missing here are
# drawn as "?".
_FONT_ROWS: dict[str, str] = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# ####. #.... #....",
    "q": "..... ..... .##.# #..## .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    " ": "..... ..... ..... ..... ..... ..... .....",
}


@cache
def _glyph(char: str, scale: int) -> np.ndarray:
    rows = _FONT_ROWS.get(char, _FONT_ROWS["?"]).split()
    bitmap = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


def text_width(text: str, *, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text` (one pixel column between glyphs).

    Example:
        >>> text_width("net.0", scale=2)
        58
    """
    if not text:
        return 0
    return (len(text) * (GLYPH_W + 1) - 1) * scale


def draw_text(
    image: np.ndarray,
    text: str,
    x: int,
    y: int,
    *,
    scale: int = 1,
    color: tuple[int, int, int] = INK,
) -> None:
    """Draw ``text`` into ``image`` (``H×W×3`` uint8, in place) with its top-left corner at x, y.

    Pixels outside the image are clipped. Characters without a glyph are drawn as ``?``.

    Example:
        >>> canvas = np.full((7, 11, 3), 255, dtype=np.uint8)
        >>> draw_text(canvas, "-1", 0, 0)
        >>> bool((canvas[3, 0:5] == INK).all())  # the minus sign's bar
        True
    """
    height, width = image.shape[:2]
    for k, char in enumerate(text):
        glyph = _glyph(char, scale)
        gx = x + k * (GLYPH_W + 1) * scale
        x0, y0 = max(gx, 0), max(y, 0)
        x1, y1 = min(gx + glyph.shape[1], width), min(y + glyph.shape[0], height)
        if x0 >= x1 or y0 >= y1:
            continue
        mask = glyph[y0 - y : y1 - y, x0 - gx : x1 - gx]
        image[y0:y1, x0:x1][mask] = color


def truncate_left(label: str, max_chars: int) -> str:
    """Keep the end of a long layer name, which tells layers apart: ``..layers.11.linear2``.

    Example:
        >>> truncate_left("encoder.layers.11.linear2", 12)
        '..11.linear2'
    """
    if len(label) <= max_chars:
        return label
    return ".." + label[len(label) - max(max_chars - 2, 1) :]


def colorize(
    values: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    colors: Sequence[tuple[int, int, int]] = VIRIDIS,
) -> np.ndarray:
    """Map a float matrix to RGB through ``colors`` (linear from ``vmin`` to ``vmax``).

    Values outside the range are clipped to its ends; non-finite values get :data:`NAN_COLOR`.

    Example:
        >>> colorize(np.array([[0.0, 1.0, np.nan]]), 0.0, 1.0).tolist()
        [[[68, 1, 84], [253, 231, 37], [150, 150, 150]]]
    """
    values = np.asarray(values, dtype=np.float64)
    table = np.asarray(colors, dtype=np.float64)
    finite = np.isfinite(values)
    span = vmax - vmin
    if span > 0 and math.isfinite(span):
        t = np.clip((np.where(finite, values, vmin) - vmin) / span, 0.0, 1.0)
    else:
        t = np.full(values.shape, 0.5)
    position = t * (len(table) - 1)
    low = np.minimum(np.floor(position).astype(np.int64), len(table) - 2)
    frac = (position - low)[..., None]
    rgb = table[low] * (1.0 - frac) + table[low + 1] * frac
    out = np.rint(rgb).astype(np.uint8)
    out[~finite] = NAN_COLOR
    return out


def _format(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}"


def render_heatmap(
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    row_labels: Sequence[str],
    steps: Sequence[int],
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    max_label_chars: int = 28,
) -> np.ndarray:
    """Render a layers × steps matrix as an annotated heat map.

    Args:
        values: ``R × C`` floats, row ``r`` = layer ``row_labels[r]`` (forward order, input
            first), column ``c`` = logging step ``steps[c]``; NaN where there is no value.
        row_labels: one name per row; names longer than ``max_label_chars`` keep their end.
        steps: one global step per column, increasing.
        title: drawn above the map.
        vmin: value of the darkest colour; default the smallest finite value.
        vmax: value of the brightest colour; default the largest finite value.
        max_label_chars: longest row label, in characters.

    Returns:
        An ``H × W × 3`` uint8 RGB image.

    Raises:
        ValueError: the shape of ``values`` does not match the labels, or it is empty.

    Example:
        >>> img = render_heatmap(np.zeros((3, 5)), row_labels=["a", "b", "c"], steps=range(5))
        >>> img.ndim, img.dtype.name
        (3, 'uint8')
    """
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"values must be a non-empty 2-d matrix; got shape {matrix.shape}")
    n_rows, n_cols = matrix.shape
    if len(row_labels) != n_rows or len(steps) != n_cols:
        raise ValueError(
            f"values has shape {matrix.shape}, expected ({len(row_labels)}, {len(steps)}) "
            "from row_labels and steps"
        )
    finite = matrix[np.isfinite(matrix)]
    if vmin is not None:
        lo = float(vmin)
    else:
        lo = float(finite.min()) if finite.size else 0.0
    if vmax is not None:
        hi = float(vmax)
    else:
        hi = float(finite.max()) if finite.size else 1.0

    # Geometry: big cells and 2× text while the layers fit, thinner rows and 1× text beyond.
    if n_rows <= 44:
        cell_h, label_scale = max(18, math.ceil(_MIN_HEAT_H / n_rows)), 2
    else:
        cell_h, label_scale = max(2, 800 // n_rows), 1
    label_every = max(1, math.ceil((GLYPH_H * label_scale + 2) / cell_h))
    cell_w = max(2, min(40, 640 // n_cols))
    heat_h, heat_w = n_rows * cell_h, n_cols * cell_w
    labels = [truncate_left(label, max_label_chars) for label in row_labels]
    label_w = max(text_width(label, scale=label_scale) for label in labels)
    text_h = GLYPH_H * 2

    tick_texts = [_format(v) for v in (hi, (lo + hi) / 2, lo)]
    tick_w = max(text_width(t, scale=2) for t in tick_texts)
    nan_note = "no value"
    legend_w = max(tick_w, text_h + 6 + text_width(nan_note, scale=2))

    x_heat = _PAD + label_w + _PAD
    x_bar = x_heat + heat_w + 2 * _PAD
    bar_w = 16
    width = max(x_bar + bar_w + _PAD + legend_w + _PAD, text_width(title, scale=2) + 2 * _PAD)
    y_heat = _PAD + text_h + _PAD if title else _PAD
    y_axis = y_heat + heat_h + 4
    height = y_axis + 4 + text_h + _PAD

    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    if title:
        draw_text(image, title, _PAD, _PAD, scale=2)

    cells = colorize(matrix, lo, hi)
    block = np.repeat(np.repeat(cells, cell_h, axis=0), cell_w, axis=1)
    image[y_heat : y_heat + heat_h, x_heat : x_heat + heat_w] = block

    glyph_h = GLYPH_H * label_scale
    for r in range(0, n_rows, label_every):
        label = labels[r]
        y = y_heat + r * cell_h + (cell_h - glyph_h) // 2
        x = x_heat - _PAD - text_width(label, scale=label_scale)
        draw_text(image, label, x, y, scale=label_scale)

    # Step axis: tick marks and step numbers that do not overlap.
    step_texts = [str(int(s)) for s in steps]
    widest = max(text_width(t, scale=2) for t in step_texts)
    n_ticks = max(1, min(n_cols, heat_w // (widest + 40)))
    ticks = sorted({round(k * (n_cols - 1) / max(n_ticks - 1, 1)) for k in range(n_ticks)})
    for c in ticks:
        cx = x_heat + c * cell_w + cell_w // 2
        image[y_heat + heat_h : y_axis, cx] = INK
        text = step_texts[c]
        text_w = text_width(text, scale=2)
        tx = max(min(cx - text_w // 2, x_heat + heat_w - text_w), x_heat)
        draw_text(image, text, tx, y_axis + 4, scale=2)
    draw_text(image, "step", x_heat - _PAD - text_width("step", scale=2), y_axis + 4, scale=2)

    # Colour bar: brightest at the top, with the range's ends and middle written next to it.
    gradient = np.linspace(hi, lo, heat_h)[:, None].repeat(bar_w, axis=1)
    image[y_heat : y_heat + heat_h, x_bar : x_bar + bar_w] = colorize(gradient, lo, hi)
    x_ticks = x_bar + bar_w + _PAD // 2
    for text, y in zip(
        tick_texts,
        (y_heat, y_heat + (heat_h - text_h) // 2, y_heat + heat_h - text_h),
        strict=True,
    ):
        draw_text(image, text, x_ticks, y, scale=2)
    if not np.isfinite(matrix).all():
        y_nan = y_axis + 4
        image[y_nan : y_nan + text_h, x_bar : x_bar + text_h] = NAN_COLOR
        draw_text(image, nan_note, x_bar + text_h + 6, y_nan, scale=2)
    return image
