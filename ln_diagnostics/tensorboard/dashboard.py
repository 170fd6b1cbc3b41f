"""Ready-made TensorBoard dashboards for a run: layout, log10 views, depth pictures, text, HParams.

:class:`Dashboard` sits next to :func:`~ln_diagnostics.tensorboard.writer.write_report` and is fed
the same :class:`~ln_diagnostics.collect.records.StepReport` of every logging step. It works on
the host only, with values that are already there, so it adds no device synchronisation:

* **Custom Scalars**: the layout of :mod:`ln_diagnostics.tensorboard.layout`, written at the
  first logging step and again only if a statistic appears later (e.g. the first shift probe).
  Its charts read the *log10 views* the dashboard writes at every logging step: for the backprop
  norm, gradient norm, update ratio and activation std, the log10 value of the first, middle and
  last layer of the hidden stack (:func:`~ln_diagnostics.diagnose.depth.hidden_stack`) and of the
  worst one (:data:`WORST_REFERENCE`), plus the log10 totals and the step-0 depth.
* **Images**: heat maps of the backprop norm (relative to the stack's last layer) and of the
  activation std, layers (forward order) × the last ``max_steps`` logging steps, in colour ranges
  fixed for every run, and the depth profile (four statistics against layer index at step 0 and at
  the latest step). Drawn every ``heatmap_every_n_steps`` after step 0 (a one-column picture
  is not worth a drawing at step 0; the profile's step-0 line is kept for the later ones), at a
  step :meth:`Dashboard.update` is told is the run's last logging step, and by
  :meth:`Dashboard.finish`. A helper process draws them
  (:class:`~ln_diagnostics.tensorboard.painter.Painter`): a logging step hands the numbers over
  and goes on, and the images are written when they are back (at the latest by
  :meth:`Dashboard.finish` or :meth:`Dashboard.close`).
* **Text** and **HParams**: :meth:`Dashboard.write_summary` and :meth:`Dashboard.write_hparams`.
  The Text tab lists tags by name, so the diagnosis (text ``diagnosis``, written by the diagnosis
  front end) comes before this summary (``diagnostics/summary``).

Example:
    >>> import tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from ln_diagnostics.collect.records import StepReport
    >>> with SummaryWriter(tempfile.mkdtemp()) as w:
    ...     board = Dashboard(w, heatmap_every_n_steps=0)
    ...     board.update(StepReport(0, {"backprop/norm/net.0": 0.01, "health/x": 1.0}, {}))
    >>> board.history_length, sorted(board.layout_stats)
    (1, [('backprop', 'norm'), ('health', 'x')])
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ln_diagnostics._validate import check_int
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.diagnose.depth import hidden_stack
from ln_diagnostics.tags import (
    DEPTH_PROFILE,
    DEPTH_STEP0,
    HEALTH_STATS,
    HEATMAP_ACTIVATION_STD,
    HEATMAP_BACKPROP,
    PARAMETERS,
    SUMMARY_TEXT_TAG,
    health_tag,
    heatmap_tag,
    log10_tag,
    parse_tag,
)
from ln_diagnostics.tensorboard.heatmap import (
    ACTIVATION_STD_SCALE,
    BACKPROP_SCALE,
    ProfilePanel,
)
from ln_diagnostics.tensorboard.layout import TOTALS, VIEWS, build_layout, layout_summary
from ln_diagnostics.tensorboard.painter import Painter, Picture
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    hparams_summaries,
    run_summary_markdown,
)
from ln_diagnostics.tensorboard.writer import write_report

__all__ = ["HPARAMS_METRICS", "WORST_REFERENCE", "Dashboard", "stack_roles"]

#: Scalars shown next to the options in the HParams tab (``hp_metric`` is Lightning's default).
HPARAMS_METRICS: tuple[str, ...] = (
    health_tag(DEPTH_STEP0),
    *(health_tag(stat) for stat in HEALTH_STATS),
    "hp_metric",
)

#: What the "worst" line of a log10 chart is: the stack layer farthest, in decades, from this
#: reference. Norms have no healthy absolute value, so theirs is the stack's median (the layer most
#: out of line with the others); the update ratio has Karpathy's ≈1e-3, the activation std unit
#: scale.
WORST_REFERENCE: dict[str, float | None] = {
    "backprop_norm": None,
    "grad_norm": None,
    "update_ratio": -3.0,
    "activation_std": 0.0,
}

# Each heat map's title and fixed colour scale; each view's depth-profile panel (title, y range
# shared by all runs, reference line).
_HEATMAPS = {
    HEATMAP_BACKPROP: ("gradient reaching each layer", BACKPROP_SCALE),
    HEATMAP_ACTIVATION_STD: ("activation std", ACTIVATION_STD_SCALE),
}
_PANELS: dict[str, tuple[str, tuple[float, float], float | None]] = {
    "backprop_norm": ("log10 backprop norm / last stack layer's", BACKPROP_SCALE[:2], 0.0),
    "grad_norm": ("log10 parameter gradient norm", (-6.0, 1.0), None),
    "update_ratio": ("log10 update ratio (dotted: 1e-3)", (-6.0, 0.0), -3.0),
    "activation_std": ("log10 activation std (dotted: 1)", (-4.0, 1.0), 0.0),
}


def _log10(value: float) -> float | None:
    """log10 of a positive value, NaN for NaN or infinity, ``None`` for zero or less."""
    if not math.isfinite(value):
        return math.nan if math.isnan(value) or value > 0 else None
    return math.log10(value) if value > 0 else None


def stack_roles(values: Mapping[str, float], reference: float | None) -> dict[str, str]:
    """Which layer plays each role in a log10 chart, from one statistic's values on the stack.

    Args:
        values: the statistic of the hidden stack's layers, in forward order.
        reference: the log10 value the "worst" layer is farthest from; ``None`` for the median
            of the stack. A NaN value is the worst whatever the reference.

    Example:
        >>> stack_roles({"a": 1e-4, "b": 1e-2, "c": 1e-1, "d": 1.0}, None)
        {'first': 'a', 'middle': 'c', 'last': 'd', 'worst': 'a'}
    """
    names = list(values)
    if not names:
        return {}
    roles = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}
    logs = {name: _log10(values[name]) for name in names}
    broken = [name for name, v in logs.items() if v is not None and math.isnan(v)]
    finite = {name: v for name, v in logs.items() if v is not None and math.isfinite(v)}
    if broken:
        roles["worst"] = broken[0]
    elif finite:
        centre = statistics.median(finite.values()) if reference is None else reference
        roles["worst"] = max(finite, key=lambda name: abs(finite[name] - centre))
    return roles


class _Column(NamedTuple):
    step: int
    values: dict[str, dict[str, float]]  # view -> layer -> raw value


class Dashboard:
    """Writes the dashboards of one run through a ``SummaryWriter``.

    Args:
        writer: the run's ``torch.utils.tensorboard.SummaryWriter``.
        heatmap_every_n_steps: redraw the heat maps and the depth profile on steps after 0
            divisible by this; 0 only at :meth:`finish`.
        max_steps: columns kept in the heat maps (the most recent logging steps).
        prefix: the tags' phase prefix (e.g. ``"val/"``); empty for training.
        layer_types: module class name per layer, shown next to the name (``net.3 Tanh``).
        warn: how the painter warns (the front end's once-per-message warning).

    Attributes:
        painter: draws the pictures in a helper process; :meth:`Painter.start` it early so that
            its start-up overlaps training.
    """

    def __init__(
        self,
        writer: Any,
        *,
        heatmap_every_n_steps: int,
        max_steps: int = 200,
        prefix: str = "",
        layer_types: Mapping[str, str] | None = None,
        warn: Callable[[str], None] = warnings.warn,
    ) -> None:
        self.heatmap_every_n_steps = check_int(
            "heatmap_every_n_steps", heatmap_every_n_steps, minimum=0
        )
        check_int("max_steps", max_steps, minimum=1)
        self.writer = writer
        self.prefix = prefix
        self.layer_types = dict(layer_types or {})
        self.layout_stats: set[tuple[str, str]] = set()
        self._route: dict[str, tuple[str, str] | None] = {}
        self._layers: dict[str, None] = {}  # every layer seen, in forward order
        self._owners: set[str] = set()  # layers with parameters of their own
        self._history: deque[_Column] = deque(maxlen=max_steps)
        self._first: _Column | None = None
        self._depth_step0: float | None = None
        self._drawn: int | None = None
        self._depth_tag = health_tag("backprop_depth_log10", prefix=prefix)
        self.painter = Painter(self._write_image, warn)

    @property
    def history_length(self) -> int:
        """Logging steps currently kept for the heat maps."""
        return len(self._history)

    def label(self, layer: str) -> str:
        """A layer's name with its module type, ``net.3 Tanh``, as the pictures show it."""
        kind = self.layer_types.get(layer)
        return f"{layer} {kind}" if kind else layer

    def stack(self) -> list[str]:
        """The hidden stack of the layers seen so far, in forward order."""
        layers = list(self._layers)
        return [layers[k] for k in hidden_stack([(n, n in self._owners) for n in layers])]

    # ------------------------------------------------------------------ per logging step
    def update(self, report: StepReport, *, last: bool = False) -> None:
        """Feed one logging step: extend the layout if needed, write the log10 views, record the
        step for the pictures and draw them on their interval, or now if ``last`` says that no
        logging step comes before the run ends (then :meth:`finish` has nothing left to draw)."""
        self.painter.poll()
        self._learn_tags(report)
        column = _Column(report.step, {view: {} for view in VIEWS.values()})
        for value, number in report.scalars.items():
            route = self._route[value]
            if route is not None:
                column.values[route[0]][route[1]] = number
        if not any(column.values.values()):  # e.g. a shift-probe-only report: no empty column
            return
        if report.step == 0:
            self._depth_step0 = report.scalars.get(self._depth_tag)
        self._write_views(report, column)
        if self._first is None:
            self._first = column
        self._history.append(column)
        every = self.heatmap_every_n_steps
        if last or (every and report.step > 0 and report.step % every == 0):
            self.draw(report.step)

    def finish(self) -> None:
        """Draw the pictures of the last logging step, if that step has not been drawn yet, and
        :meth:`close`."""
        if self._history and self._history[-1].step != self._drawn:
            self.draw(self._history[-1].step)
        self.close()

    def close(self) -> None:
        """Write the pictures still being drawn (waiting for them) and stop the helper."""
        self.painter.close()

    def _write_image(self, summary: Any, step: int) -> None:
        self.writer._get_file_writer().add_summary(summary, step)

    def _learn_tags(self, report: StepReport) -> None:
        new_tags = [value for value in report.scalars if value not in self._route]
        if not new_tags:
            return
        known = len(self.layout_stats)
        for value in new_tags:  # in report order: activations first, in forward order
            parsed = parse_tag(value)
            route = None
            if parsed is not None:
                self.layout_stats.add((parsed.group, parsed.stat))
                if parsed.layer is not None:
                    self._layers.setdefault(parsed.layer, None)
                    if parsed.group == PARAMETERS:
                        self._owners.add(parsed.layer)
                view = VIEWS.get((parsed.group, parsed.stat))
                if view is not None and parsed.layer is not None:
                    route = (view, parsed.layer)
            self._route[value] = route
        if len(self.layout_stats) > known:
            self.write_layout(report.step)

    def _write_views(self, report: StepReport, column: _Column) -> None:
        views: dict[str, float] = {}
        stack = self.stack()
        for view, values in column.values.items():
            on_stack = {name: values[name] for name in stack if name in values}
            for role, layer in stack_roles(on_stack, WORST_REFERENCE[view]).items():
                logged = _log10(on_stack[layer])
                if logged is not None:
                    views[log10_tag(view, role, prefix=self.prefix)] = logged
        for stat in TOTALS:
            total = report.scalars.get(health_tag(stat, prefix=self.prefix))
            logged = None if total is None else _log10(total)
            if logged is not None:
                views[log10_tag(stat, prefix=self.prefix)] = logged
        if self._depth_step0 is not None and self._depth_tag in report.scalars:
            views[health_tag(DEPTH_STEP0, prefix=self.prefix)] = self._depth_step0
        if views:
            write_report(self.writer, StepReport(report.step, views, {}))

    def write_layout(self, step: int) -> None:
        """Write the custom-scalars layout for the statistics seen so far."""
        layout = build_layout(self.layout_stats, prefix=self.prefix)
        self.writer._get_file_writer().add_summary(layout_summary(layout), step)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the step-0 depth (its flat line and HParams metric)."""
        return {} if self._depth_step0 is None else {"depth_step0": self._depth_step0}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; missing keys leave the dashboard as it is."""
        self._depth_step0 = state.get("depth_step0", self._depth_step0)

    # ------------------------------------------------------------------ pictures
    def heatmap(self, name: str) -> tuple[np.ndarray, list[str], list[int]] | None:
        """The ``(matrix, layer names, steps)`` behind heat map ``name``; ``None`` if empty.

        ``heatmaps/backprop_log10_norm`` holds log10 of each layer's backprop norm over that of the
        hidden stack's last layer at the same step; ``heatmaps/activation_std`` the std itself.
        """
        view = {HEATMAP_BACKPROP: "backprop_norm", HEATMAP_ACTIVATION_STD: "activation_std"}[name]
        rows = [
            layer for layer in self._layers if any(layer in c.values[view] for c in self._history)
        ]
        if not rows:
            return None
        steps = [column.step for column in self._history]
        matrix = np.full((len(rows), len(steps)), np.nan)
        for c, column in enumerate(self._history):
            values = column.values[view]
            if name == HEATMAP_BACKPROP:
                matrix[:, c] = self._relative_log10(values, rows)
            else:
                matrix[:, c] = [values.get(layer, math.nan) for layer in rows]
        return matrix, rows, steps

    def _relative_log10(self, values: Mapping[str, float], rows: Sequence[str]) -> list[float]:
        """log10(norm / the stack's last layer's norm) per row; NaN where either is missing."""
        on_stack = [name for name in self.stack() if name in values]
        reference = _log10(values[on_stack[-1]]) if on_stack else None
        out = []
        for layer in rows:
            logged = _log10(values[layer]) if layer in values else None
            out.append(math.nan if logged is None or reference is None else logged - reference)
        return out

    def _stack_span(self, rows: Sequence[str]) -> tuple[int, int] | None:
        stack = set(self.stack())
        inside = [k for k, name in enumerate(rows) if name in stack]
        if not inside or len(inside) == len(rows):
            return None
        return inside[0], inside[-1]

    def draw(self, step: int) -> None:
        """Hand the heat maps and the depth profile of the history so far to the painter."""
        pictures = []
        for name, (what, scale) in _HEATMAPS.items():
            data = self.heatmap(name)
            if data is None:
                continue
            matrix, rows, steps = data
            pictures.append(
                Picture(
                    heatmap_tag(name, prefix=self.prefix),
                    "heatmap",
                    {
                        "values": matrix,
                        "row_labels": [self.label(r) for r in rows],
                        "steps": steps,
                        "scale": scale,
                        "title": f"{what}, steps {steps[0]}–{steps[-1]}",
                        "stack": self._stack_span(rows),
                    },
                )
            )
        profile = self.profile_picture()
        if profile is not None:
            pictures.append(profile)
        self.painter.submit(step, pictures)
        self._drawn = step

    def profile_panels(self) -> tuple[list[str], list[ProfilePanel]]:
        """The layers (forward order) and the four log10 panels of the depth profile: step 0 and
        the latest logging step."""
        layers = list(self._layers)
        columns = [c for c in (self._first, self._history[-1] if self._history else None) if c]
        if len(columns) == 2 and columns[0].step == columns[1].step:
            columns = columns[:1]
        panels = []
        for view, (title, limits, reference) in _PANELS.items():
            lines = []
            for column in columns:
                values = column.values[view]
                if view == "backprop_norm":
                    y = self._relative_log10(values, layers)
                else:
                    y = [_log10(values[n]) if n in values else None for n in layers]
                    y = [math.nan if v is None else v for v in y]
                if any(math.isfinite(v) for v in y):
                    lines.append((f"step {column.step}", y))
            if lines:
                panels.append(ProfilePanel(title, lines, limits, reference))
        return layers, panels

    def profile_picture(self) -> Picture | None:
        """The depth profile to draw; ``None`` before the first logging step."""
        layers, panels = self.profile_panels()
        if not panels:
            return None
        return Picture(
            heatmap_tag(DEPTH_PROFILE, prefix=self.prefix),
            "profiles",
            {
                "panels": panels,
                "layer_labels": [self.label(n) for n in layers],
                "title": "Depth profile: dashed = step 0, solid = latest step",
                "stack": self._stack_span(layers),
            },
        )

    # ------------------------------------------------------------------ text and HParams
    def write_summary(
        self,
        rows: Sequence[LayerRow],
        options: Mapping[str, Any],
        *,
        swap_report: str | None = None,
        step: int = 0,
    ) -> None:
        """Write the text summary (options, NormSwap report, layers) to the Text tab."""
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
