"""Ready-made TensorBoard dashboards for a run: layout, depth × step heat maps, summary, HParams.

:class:`Dashboard` sits next to :func:`~ln_diagnostics.tensorboard.writer.write_report` and is fed
the same :class:`~ln_diagnostics.collect.records.StepReport` of every logging step. It works on
the host only, with values that are already there, so it adds no device synchronisation:

* **Custom Scalars**: the layout of :mod:`ln_diagnostics.tensorboard.layout`, written at the
  first logging step and written again only if a statistic appears later (e.g. the first
  covariate-shift probe); TensorBoard shows the latest one.
* **Images**: ``heatmaps/backprop_log10_norm`` and ``heatmaps/activation_std``, layers (forward
  order) × the last ``max_steps`` logging steps, refreshed every ``heatmap_every_n_steps``.
* **Text** and **HParams**: :meth:`Dashboard.write_summary` and :meth:`Dashboard.write_hparams`.

Example:
    >>> import tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from ln_diagnostics.collect.records import StepReport
    >>> with SummaryWriter(tempfile.mkdtemp()) as w:
    ...     board = Dashboard(w, heatmap_every_n_steps=10)
    ...     board.update(StepReport(0, {"backprop/norm/net.0": 0.01, "health/x": 1.0}, {}))
    >>> board.history_length, sorted(board.layout_stats)
    (1, [('backprop', 'norm'), ('health', 'x')])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ln_diagnostics._validate import check_int
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.tags import (
    ACTIVATIONS,
    BACKPROP,
    HEALTH_STATS,
    HEATMAP_ACTIVATION_STD,
    HEATMAP_BACKPROP,
    SUMMARY_TEXT_TAG,
    health_tag,
    heatmap_tag,
    parse_tag,
)
from ln_diagnostics.tensorboard.heatmap import render_heatmap
from ln_diagnostics.tensorboard.layout import build_layout, layout_summary
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    hparams_summaries,
    run_summary_markdown,
)
from ln_diagnostics.tensorboard.writer import image_summary

__all__ = ["HPARAMS_METRICS", "Dashboard"]

#: Scalars shown next to the options in the HParams tab (``hp_metric`` is Lightning's default).
HPARAMS_METRICS: tuple[str, ...] = (*(health_tag(stat) for stat in HEALTH_STATS), "hp_metric")

# Which scalar feeds which heat map, and how a value becomes a cell.
_HEATMAPS: dict[tuple[str, str], tuple[str, str]] = {
    (BACKPROP, "norm"): (HEATMAP_BACKPROP, "log10 backprop norm (gradient w.r.t. layer output)"),
    (ACTIVATIONS, "std"): (HEATMAP_ACTIVATION_STD, "activation std"),
}


def _cell(name: str, value: float) -> float:
    if name == HEATMAP_BACKPROP:
        return math.log10(value) if value > 0 and math.isfinite(value) else math.nan
    return value if math.isfinite(value) else math.nan


class Dashboard:
    """Writes the dashboards of one run through a ``SummaryWriter``.

    Args:
        writer: the run's ``torch.utils.tensorboard.SummaryWriter``.
        heatmap_every_n_steps: redraw the heat maps on steps divisible by this; 0 never.
        max_steps: columns kept in the heat maps (the most recent logging steps).
        prefix: the tags' phase prefix (e.g. ``"val/"``); empty for training.
    """

    def __init__(
        self,
        writer: Any,
        *,
        heatmap_every_n_steps: int,
        max_steps: int = 200,
        prefix: str = "",
    ) -> None:
        self.heatmap_every_n_steps = check_int(
            "heatmap_every_n_steps", heatmap_every_n_steps, minimum=0
        )
        check_int("max_steps", max_steps, minimum=1)
        self.writer = writer
        self.prefix = prefix
        self.layout_stats: set[tuple[str, str]] = set()
        self._route: dict[str, tuple[str, str] | None] = {}
        self._rows: dict[str, dict[str, None]] = {name: {} for name, _ in _HEATMAPS.values()}
        self._history: deque[tuple[int, dict[str, dict[str, float]]]] = deque(maxlen=max_steps)

    @property
    def history_length(self) -> int:
        """Logging steps currently kept for the heat maps."""
        return len(self._history)

    # ------------------------------------------------------------------ per logging step
    def update(self, report: StepReport) -> None:
        """Feed one logging step: extend the layout if needed, record and maybe draw heat maps."""
        new_tags = [value for value in report.scalars if value not in self._route]
        if new_tags:
            known = len(self.layout_stats)
            for value in new_tags:  # in report order, so heat-map rows keep forward order
                parsed = parse_tag(value)
                route = None
                if parsed is not None:
                    self.layout_stats.add((parsed.group, parsed.stat))
                    target = _HEATMAPS.get((parsed.group, parsed.stat))
                    if target is not None:
                        route = (target[0], parsed.layer or "")
                        self._rows[target[0]].setdefault(route[1], None)
                self._route[value] = route
            if len(self.layout_stats) > known:
                self.write_layout(report.step)
        cells: dict[str, dict[str, float]] = {name: {} for name in self._rows}
        for value, number in report.scalars.items():
            route = self._route[value]
            if route is not None:
                name, layer = route
                cells[name][layer] = _cell(name, number)
        if not any(cells.values()):  # e.g. a shift-probe-only report: no column of grey cells
            return
        self._history.append((report.step, cells))
        every = self.heatmap_every_n_steps
        if every and report.step % every == 0:
            self.write_heatmaps(report.step)

    def write_layout(self, step: int) -> None:
        """Write the custom-scalars layout for the statistics seen so far."""
        layout = build_layout(self.layout_stats, prefix=self.prefix)
        self.writer._get_file_writer().add_summary(layout_summary(layout), step)

    def heatmap(self, name: str) -> tuple[np.ndarray, list[str], list[int]] | None:
        """The ``(matrix, layer names, steps)`` behind heat map ``name``; ``None`` if empty."""
        rows = list(self._rows.get(name, ()))
        if not rows or not self._history:
            return None
        steps = [step for step, _ in self._history]
        matrix = np.full((len(rows), len(steps)), np.nan)
        index = {layer: r for r, layer in enumerate(rows)}
        for c, (_, cells) in enumerate(self._history):
            for layer, number in cells[name].items():
                matrix[index[layer], c] = number
        return matrix, rows, steps

    def write_heatmaps(self, step: int) -> None:
        """Render and write every heat map that has data."""
        for name, title in _HEATMAPS.values():
            data = self.heatmap(name)
            if data is None:
                continue
            matrix, rows, steps = data
            image = render_heatmap(matrix, row_labels=rows, steps=steps, title=title)
            summary = image_summary(heatmap_tag(name, prefix=self.prefix), image)
            self.writer._get_file_writer().add_summary(summary, step)

    # ------------------------------------------------------------------ once per run
    def write_summary(
        self,
        rows: Sequence[LayerRow],
        options: Mapping[str, Any],
        *,
        swap_report: str | None = None,
        step: int = 0,
    ) -> None:
        """Write the text summary (layers, options, NormSwap report) to the Text tab."""
        text = run_summary_markdown(rows, options, swap_report=swap_report)
        self.writer.add_text(f"{self.prefix}{SUMMARY_TEXT_TAG}", text, step)

    def write_hparams(
        self,
        options: Mapping[str, Any],
        *,
        model_hparams: Mapping[str, Any] | None = None,
        metrics: Sequence[str] = HPARAMS_METRICS,
    ) -> None:
        """Write the options (and the model's hyperparameters) as this run's HParams session."""
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(options, metrics, model_hparams=model_hparams):
            file_writer.add_summary(summary)
