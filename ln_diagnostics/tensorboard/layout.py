"""The custom-scalars layout: what matters on the first screen, every layer one click away.

TensorBoard's *Custom Scalars* dashboard reads a ``Layout`` proto from the run; a chart selects its
lines with regular expressions over tags, and charts have no log axis (``layout.proto`` offers
none), so the log10 charts read the ``log10/…`` views that
:class:`~ln_diagnostics.tensorboard.dashboard.Dashboard` writes. In order:

1. **Health**: the backprop depth of the hidden stack with its step-0 value as a flat line (so
   TensorBoard's outlier clipping cannot cut it off), log10 total gradient norm and update ratio,
   non-finite counts, and any other model-wide scalar (e.g. a count of diagnosis findings).
2. **Depth (log10)**: backprop norm, gradient norm, update ratio and activation std, each with four
   lines a run: the first, middle and last layer of the hidden stack and the worst one.
3. **Shift**: the model-wide covariate-shift and ICS means.
4. **All layers: <group>**, collapsed: one chart per statistic with every layer as a line.

Example:
    >>> layout = build_layout({("backprop", "norm"), ("health", "backprop_depth_log10")})
    >>> [(c.title[:5], c.closed) for c in layout.category]
    [('Healt', False), ('Depth', False), ('All l', True)]
    >>> list(layout.category[1].chart[0].multiline.tag)
    ['^log10/backprop_norm/(first|middle|last|worst)$']
"""

from __future__ import annotations

from collections.abc import Iterable

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from ln_diagnostics.tags import (
    ACTIVATIONS,
    BACKPROP,
    DEPTH_STEP0,
    GRADIENTS,
    HEALTH,
    HEALTH_STATS,
    LAYER_GROUPS,
    PARAMETERS,
    SHIFT,
    UPDATES,
    health_tag,
    log10_regex,
    parse_tag,
    stat_regex,
)

__all__ = [
    "DEPTH_TITLE",
    "HEALTH_TITLE",
    "TOTALS",
    "VIEWS",
    "build_layout",
    "layout_summary",
    "stat_keys",
]

HEALTH_TITLE = "Health"
DEPTH_TITLE = "Depth (log10): first, middle, last, worst layer of the hidden stack"
SHIFT_TITLE = "Shift"
ALL_LAYERS = "All layers: "

#: The per-layer statistics with a bounded log10 chart, and the name of their ``log10/`` view.
VIEWS: dict[tuple[str, str], str] = {
    (BACKPROP, "norm"): "backprop_norm",
    (GRADIENTS, "norm"): "grad_norm",
    (UPDATES, "ratio"): "update_ratio",
    (ACTIVATIONS, "std"): "activation_std",
}
_VIEW_TITLES = {
    "backprop_norm": "log10 backprop norm (gradient reaching the layer)",
    "grad_norm": "log10 parameter gradient norm",
    "update_ratio": "log10 update ratio (healthy ≈ -3)",
    "activation_std": "log10 activation std",
}
#: Model-wide totals charted in log10 in the Health section.
TOTALS: tuple[str, ...] = ("grad_norm_total", "update_ratio_total")
_TOTAL_TITLES = {
    "grad_norm_total": "log10 total gradient norm",
    "update_ratio_total": "log10 total update ratio (healthy ≈ -3)",
}
_NONFINITE = ("nonfinite_activations", "nonfinite_grads")
# Model-wide scalars charted outside Health: shift means under Shift, the parameter norm with the
# per-layer parameter norms.
_ELSEWHERE = {"param_norm_total": PARAMETERS}

# Per-layer charts in reading order; statistics not listed follow in alphabetical order.
_PREFERRED: dict[str, tuple[str, ...]] = {
    ACTIVATIONS: (
        "std",
        "mean",
        "rms",
        "absmax",
        "kurtosis",
        "zero_frac",
        "saturated_frac",
        "nonfinite",
    ),
    GRADIENTS: ("norm", "ratio"),
}


def stat_keys(tags: Iterable[str]) -> set[tuple[str, str]]:
    """The ``(group, stat)`` pairs of the tags that follow the grammar; others are ignored.

    Example:
        >>> sorted(stat_keys(["gradients/norm/net.0", "gradients/norm/net.2", "loss"]))
        [('gradients', 'norm')]
    """
    keys = set()
    for value in tags:
        parsed = parse_tag(value)
        if parsed is not None:
            keys.add((parsed.group, parsed.stat))
    return keys


def _ordered(preferred: Iterable[str], stats: Iterable[str]) -> list[str]:
    rank = {stat: k for k, stat in enumerate(preferred)}
    return sorted(set(stats), key=lambda s: (rank.get(s, len(rank)), s))


def _chart(title: str, *regexes: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(
        title=title, multiline=layout_pb2.MultilineChartContent(tag=list(regexes))
    )


def _health_charts(health: set[str], prefix: str) -> list[layout_pb2.Chart]:
    def regex(stat: str) -> str:
        return stat_regex(HEALTH, stat, prefix=prefix)

    charts = []
    if "backprop_depth_log10" in health:
        charts.append(
            _chart(
                f"{prefix}backprop depth: log10(first / last layer of the hidden stack); "
                "flat line = step 0",
                regex("backprop_depth_log10"),
                regex(DEPTH_STEP0),
            )
        )
    charts += [
        _chart(f"{prefix}{_TOTAL_TITLES[stat]}", log10_regex(stat, roles=False, prefix=prefix))
        for stat in TOTALS
        if stat in health
    ]
    nonfinite = [stat for stat in _NONFINITE if stat in health]
    if nonfinite:
        charts.append(_chart(f"{prefix}non-finite values", *(regex(s) for s in nonfinite)))
    shown = {"backprop_depth_log10", DEPTH_STEP0, *TOTALS, *_NONFINITE, *_ELSEWHERE}
    others = [s for s in health - shown if not s.startswith((SHIFT, "ics"))]
    charts += [
        _chart(health_tag(s, prefix=prefix), regex(s)) for s in _ordered(HEALTH_STATS, others)
    ]
    return charts


def build_layout(stats: Iterable[tuple[str, str]], *, prefix: str = "") -> layout_pb2.Layout:
    """A layout for the given ``(group, stat)`` pairs; sections without statistics are left out.

    Args:
        stats: pairs such as ``("activations", "std")`` or ``("health", "grad_norm_total")``,
            e.g. from :func:`stat_keys` over a step's scalar tags.
        prefix: the run phase prefix of the tags (e.g. ``"val/"``), empty for training.
    """
    by_group: dict[str, set[str]] = {}
    for group, stat in stats:
        by_group.setdefault(group, set()).add(stat)
    health = by_group.get(HEALTH, set())
    sections: list[tuple[str, list[layout_pb2.Chart], bool]] = [
        (HEALTH_TITLE, _health_charts(health, prefix), False),
        (
            DEPTH_TITLE,
            [
                _chart(
                    f"{prefix}{_VIEW_TITLES[view]}", log10_regex(view, roles=True, prefix=prefix)
                )
                for key, view in VIEWS.items()
                if key[1] in by_group.get(key[0], ())
            ],
            False,
        ),
        (
            SHIFT_TITLE,
            [
                _chart(health_tag(s, prefix=prefix), stat_regex(HEALTH, s, prefix=prefix))
                for s in sorted(s for s in health if s.startswith((SHIFT, "ics")))
            ],
            False,
        ),
    ]
    for group in LAYER_GROUPS:
        charts = [
            _chart(health_tag(s, prefix=prefix), stat_regex(HEALTH, s, prefix=prefix))
            for s, home in _ELSEWHERE.items()
            if home == group and s in health
        ]
        charts += [
            _chart(f"{prefix}{group}/{stat}", stat_regex(group, stat, prefix=prefix))
            for stat in _ordered(_PREFERRED.get(group, ()), by_group.get(group, ()))
        ]
        sections.append((f"{ALL_LAYERS}{group}", charts, True))
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(title=f"{prefix}{title}", chart=charts, closed=closed)
            for title, charts, closed in sections
            if charts
        ]
    )


def layout_summary(layout: layout_pb2.Layout) -> Summary:
    """The ``Summary`` that carries ``layout`` to the custom-scalars plugin.

    Write it with ``writer._get_file_writer().add_summary(summary, step)``; TensorBoard shows the
    most recent layout of a run.
    """
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[layout.SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    return Summary(
        value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=smd)]
    )
