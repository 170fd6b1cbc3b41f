"""The custom-scalars layout: one chart per statistic, every layer a line in it.

TensorBoard's *Custom Scalars* dashboard reads a ``Layout`` proto from the run. Ours has a
``Health`` category first (one chart per model-wide ``health/*`` scalar), then one category per
tag group (``activations``, ``gradients``, ``backprop``, ``parameters``, ``updates``, ``shift``,
``ics``) holding one multi-line chart per statistic; a chart selects its lines with a regular
expression over the tag grammar (``^activations/std/.+$``), so it shows every layer without
listing them.

Example:
    >>> layout = build_layout({("activations", "std"), ("health", "grad_norm_total")})
    >>> [c.title for c in layout.category]
    ['Health', 'activations']
    >>> layout.category[1].chart[0].multiline.tag[0]
    '^activations/std/.+$'
"""

from __future__ import annotations

from collections.abc import Iterable

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from ln_diagnostics.tags import HEALTH, HEALTH_STATS, LAYER_GROUPS, parse_tag, stat_regex

__all__ = ["HEALTH_TITLE", "build_layout", "layout_summary", "stat_keys"]

HEALTH_TITLE = "Health"

# Charts in reading order; statistics not listed follow in alphabetical order.
_PREFERRED: dict[str, tuple[str, ...]] = {
    HEALTH: HEALTH_STATS,
    "activations": (
        "std",
        "mean",
        "rms",
        "absmax",
        "kurtosis",
        "zero_frac",
        "saturated_frac",
        "nonfinite",
    ),
    "gradients": ("norm", "ratio"),
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


def _ordered(group: str, stats: Iterable[str]) -> list[str]:
    preferred = _PREFERRED.get(group, ())
    rank = {stat: k for k, stat in enumerate(preferred)}
    return sorted(set(stats), key=lambda s: (rank.get(s, len(preferred)), s))


def build_layout(stats: Iterable[tuple[str, str]], *, prefix: str = "") -> layout_pb2.Layout:
    """A layout for the given ``(group, stat)`` pairs; groups without statistics are left out.

    Args:
        stats: pairs such as ``("activations", "std")`` or ``("health", "grad_norm_total")``,
            e.g. from :func:`stat_keys` over a step's scalar tags.
        prefix: the run phase prefix of the tags (e.g. ``"val/"``), empty for training.
    """
    by_group: dict[str, set[str]] = {}
    for group, stat in stats:
        by_group.setdefault(group, set()).add(stat)
    categories = []
    for group in (HEALTH, *LAYER_GROUPS):
        if group not in by_group:
            continue
        charts = [
            layout_pb2.Chart(
                title=f"{prefix}{group}/{stat}",
                multiline=layout_pb2.MultilineChartContent(
                    tag=[stat_regex(group, stat, prefix=prefix)]
                ),
            )
            for stat in _ordered(group, by_group[group])
        ]
        title = HEALTH_TITLE if group == HEALTH else group
        categories.append(layout_pb2.Category(title=f"{prefix}{title}", chart=charts))
    return layout_pb2.Layout(category=categories)


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
