"""Depth pictures drawn with matplotlib: layers × steps heat maps and depth profiles.

Both are pure functions from numbers to an ``(H, W, 3)`` uint8 RGB array, which
:func:`ln_diagnostics.tensorboard.writer.image_summary` writes as a PNG. They draw on a bare
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no GUI backend), and matplotlib is
imported on the first drawing only, so a run that never draws does not load it.

Colour and axis ranges are fixed per quantity (:class:`Scale`), not taken from the data, so that the
same colour means the same value in every run under one log root: two runs' heat maps compare at a
glance. Values outside the range take the end colours, and the colour bar's pointed ends say so.

Example:
    >>> image = render_heatmap(
    ...     [[-4.0, -3.5], [0.0, 0.0]], row_labels=["net.1 Tanh", "net.3 Tanh"], steps=[0, 10],
    ...     scale=BACKPROP_SCALE, title="backprop")
    >>> image.dtype.name, image.shape[2]
    ('uint8', 3)
"""

from __future__ import annotations

import ctypes
import gc
import math
from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from ln_diagnostics.tags import clip

__all__ = [
    "ACTIVATION_STD_SCALE",
    "BACKPROP_SCALE",
    "NAN_COLOR",
    "ProfilePanel",
    "Scale",
    "render_heatmap",
    "render_profiles",
    "tick_positions",
]

#: Colour of cells without a finite value (neither colour map holds a grey).
NAN_COLOR = "#999999"


class Scale(NamedTuple):
    """A fixed value range and how it is drawn.

    Attributes:
        vmin: value of the lowest colour (or the bottom of a profile's y axis).
        vmax: value of the highest colour.
        log: colour by log10 of the value (for positive values that span decades).
        cmap: a matplotlib colour map name.
        label: what the colours mean, written beside the colour bar.
    """

    vmin: float
    vmax: float
    log: bool
    cmap: str
    label: str


#: log10 of a layer's backprop norm over that of the hidden stack's last layer at the same step:
#: 0 (white) = the gradient arrives undiminished, -6 = a millionth of it (blue: vanishing toward
#: the input), +6 = a million times more (red: exploding). Relative, so the loss scale of a run
#: does not move the colours, and the stack's first row reads as ``health/backprop_depth_log10``.
BACKPROP_SCALE = Scale(-6.0, 6.0, False, "RdBu_r", "log10(backprop norm / last stack layer's)")
#: Activation std on a log colour scale from 1e-3 (collapsed) to 10; 1 is unit scale.
ACTIVATION_STD_SCALE = Scale(1e-3, 1e1, True, "viridis", "activation std (log colour scale)")


#: Width of the pictures in pixels: that of an Images-tab card, so that they show at full size
#: and their labels stay legible without "Show actual image size".
WIDTH_PX = 360
_DPI = 100
_FONT = {"font.size": 6.5, "axes.titlesize": 7.0, "legend.fontsize": 6.0}


def _draw(paint: Any, height_px: float) -> np.ndarray:
    """``paint(figure)`` on a new figure in the pictures' font sizes, rendered to RGB."""
    import matplotlib  # first drawing only: most runs never pay the import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gc.freeze()  # the process's objects so far: the collection below skips them
    try:
        with matplotlib.rc_context(_FONT):
            size = (WIDTH_PX / _DPI, height_px / _DPI)
            figure = Figure(figsize=size, dpi=_DPI, layout="constrained")
            paint(figure)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
        rgb = np.array(np.asarray(canvas.buffer_rgba())[..., :3])
        del canvas, figure
        _return_freed_heap()
    finally:
        gc.unfreeze()
    return rgb


def _return_freed_heap() -> None:
    """Hand the drawing's freed heap pages back to the OS (glibc's ``malloc_trim``).

    A drawing allocates and frees ~10 MB in small blocks; glibc keeps them, so without this the
    training process would carry them for the rest of the run. matplotlib's artists hold
    reference cycles, so they are collected first; the objects that existed before the drawing
    are frozen (``gc.freeze``) meanwhile, which makes that collection look at the drawing's
    objects only: a full collection of a training process's ~450 k objects takes 0.1-0.5 s, and
    each picture paid one. No-op where glibc is absent.
    """
    trim = _malloc_trim()
    if trim is not None:
        gc.collect()
        trim(0)


@cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def tick_positions(n: int, max_ticks: int) -> list[int]:
    """Up to ``max_ticks`` evenly spaced indices of ``range(n)``, always with the first and last.

    Example:
        >>> tick_positions(11, 3), tick_positions(2, 8)
        ([0, 5, 10], [0, 1])
    """
    if n <= max_ticks:
        return list(range(n))
    return sorted({round(k * (n - 1) / (max_ticks - 1)) for k in range(max_ticks)})


def _colour_map(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad=NAN_COLOR)


def _norm(scale: Scale) -> Any:
    from matplotlib.colors import LogNorm, Normalize

    if scale.log:
        return LogNorm(vmin=scale.vmin, vmax=scale.vmax, clip=False)
    return Normalize(vmin=scale.vmin, vmax=scale.vmax, clip=False)


#: Longest tick label drawn: longer layer names keep their end (``…layer.0.attention.query``),
#: which tells the layers apart, so that the plot keeps room in the picture's fixed width.
MAX_LABEL_CHARS = 28


def _label_rows(axes: Any, labels: Sequence[str], font_size: float) -> None:
    rows = tick_positions(len(labels), 64)
    axes.set_yticks(
        rows, [clip(labels[r], MAX_LABEL_CHARS, ellipsis="…") for r in rows], fontsize=font_size
    )


def _mark_stack(axes: Any, stack: tuple[int, int] | None, *, horizontal: bool) -> None:
    """Dashed lines around the hidden stack (rows or columns ``stack[0]..stack[1]``)."""
    if stack is None:
        return
    line = axes.axhline if horizontal else axes.axvline
    for edge in (stack[0] - 0.5, stack[1] + 0.5):
        line(edge, color="black", linestyle="--", linewidth=0.8)


def render_heatmap(
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    row_labels: Sequence[str],
    steps: Sequence[int],
    scale: Scale,
    title: str = "",
    stack: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render a layers × steps matrix as a heat map with a fixed colour range.

    Args:
        values: ``R × C`` floats, row ``r`` = layer ``row_labels[r]`` (forward order, input at the
            top), column ``c`` = logging step ``steps[c]``; NaN where there is no value (grey).
        row_labels: one label per row, e.g. ``"net.3 Tanh"``.
        steps: one global step per column, increasing.
        scale: the colour range and map, the same for every run.
        title: drawn above the map.
        stack: first and last row of the hidden stack, marked with dashed lines.

    Returns:
        An ``H × W × 3`` uint8 RGB image.

    Raises:
        ValueError: the shape of ``values`` does not match the labels, or it is empty.
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
    font = 6.0 if n_rows <= 40 else max(4.0, 6.0 * 40 / min(n_rows, 64))
    shown = np.where(np.isfinite(matrix), matrix, np.nan)
    if scale.log:
        shown = np.where(shown > 0, shown, np.nan)
    missing = not np.isfinite(shown).all()

    def paint(figure: Any) -> None:
        axes = figure.add_subplot()
        image = axes.imshow(
            np.ma.masked_invalid(shown),
            aspect="auto",
            interpolation="nearest",
            cmap=_colour_map(scale.cmap),
            norm=_norm(scale),
        )
        _label_rows(axes, row_labels, font)
        columns = tick_positions(n_cols, 5)
        axes.set_xticks(columns, [str(int(steps[c])) for c in columns])
        axes.set_xlabel("step" + ("   (grey: no value)" if missing else ""))
        _mark_stack(axes, stack, horizontal=True)
        if title:
            axes.set_title(title, loc="left")
        bar = figure.colorbar(image, ax=axes, extend="both", fraction=0.08, pad=0.02)
        bar.set_label(scale.label)

    return _draw(paint, 110 + 10 * min(n_rows, 64))


class ProfilePanel(NamedTuple):
    """One statistic of a depth profile, in log10.

    Attributes:
        title: the panel's title.
        lines: ``(label, values)`` per line, one value per layer (NaN where the layer has none).
        limits: the y range every run shares; widened to whole decades when values leave it.
        reference: a dashed horizontal line at this value (e.g. -3 for the update ratio), or None.
    """

    title: str
    lines: Sequence[tuple[str, Sequence[float]]]
    limits: tuple[float, float]
    reference: float | None = None


def _limits(panel: ProfilePanel) -> tuple[float, float]:
    low, high = panel.limits
    finite = [v for _, values in panel.lines for v in values if math.isfinite(v)]
    if finite:
        low, high = min(low, math.floor(min(finite))), max(high, math.ceil(max(finite)))
    return low, high


def render_profiles(
    panels: Sequence[ProfilePanel],
    *,
    layer_labels: Sequence[str],
    title: str = "",
    stack: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render statistics against layer index (forward order), one panel each, stacked.

    Args:
        panels: the statistics; every panel has one value per layer in each line.
        layer_labels: x tick labels, e.g. ``"net.3 Tanh"``.
        title: drawn above the panels.
        stack: first and last layer index of the hidden stack, marked with dashed lines.

    Returns:
        An ``H × W × 3`` uint8 RGB image.

    Example:
        >>> panel = ProfilePanel("log10 x", [("step 0", [-2.0, -1.0, 0.0])], (-3.0, 1.0))
        >>> render_profiles([panel], layer_labels=["a", "b", "c"]).shape[2]
        3
    """
    n = len(layer_labels)
    for panel in panels:
        for label, values in panel.lines:
            if len(values) != n:
                raise ValueError(
                    f"panel {panel.title!r}, line {label!r}: {len(values)} values for {n} layers"
                )
    x = np.arange(n)
    styles = ({"linestyle": "--", "color": "0.45"}, {"linestyle": "-", "color": "tab:blue"})

    def paint(figure: Any) -> None:
        axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for axes, panel in zip(axes_list, panels, strict=True):
            for (label, values), style in zip(panel.lines, styles, strict=False):
                y = np.asarray(values, dtype=np.float64)
                present = np.isfinite(y)
                axes.plot(x[present], y[present], marker="o", markersize=2, label=label, **style)
            if panel.reference is not None:
                axes.axhline(panel.reference, color="tab:green", linestyle=":", linewidth=1)
            axes.set_ylim(*_limits(panel))
            axes.set_title(panel.title, loc="left")
            axes.grid(True, alpha=0.3)
            _mark_stack(axes, stack, horizontal=False)
        axes_list[0].legend(loc="best")
        if title:
            figure.suptitle(title, fontsize=7.0, x=0.02, ha="left")
        ticks = tick_positions(n, 40)
        font = 5.5 if len(ticks) <= 24 else 4.5
        labels = [clip(layer_labels[k], MAX_LABEL_CHARS, ellipsis="…") for k in ticks]
        axes_list[-1].set_xticks(ticks, labels, rotation=90, fontsize=font)
        axes_list[-1].set_xlabel("layer, forward order (dashed: the hidden stack)")

    return _draw(paint, 130 + 150 * len(panels))
