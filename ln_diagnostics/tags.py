"""The one TensorBoard tag grammar: ``{group}/{stat}/{layer}`` and ``health/{stat}``.

The collector, the probes, the layouts, the dashboard and the CLI build and parse tags through
these functions, so the grammar lives in exactly one place (the writer treats tags as opaque
strings, threshold rules match them with globs).

Example:
    >>> tag("gradients", "norm", "net.3")
    'gradients/norm/net.3'
    >>> health_tag("grad_norm_total")
    'health/grad_norm_total'
    >>> parse_tag("activations/std/encoder.layers.0.linear1")
    ParsedTag(group='activations', stat='std', layer='encoder.layers.0.linear1')
    >>> stat_regex("activations", "std")
    '^activations/std/.+$'
    >>> heatmap_tag(HEATMAP_BACKPROP)
    'heatmaps/backprop_log10_norm'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import NamedTuple

ACTIVATIONS = "activations"
GRADIENTS = "gradients"
BACKPROP = "backprop"
PARAMETERS = "parameters"
UPDATES = "updates"
SHIFT = "shift"
ICS = "ics"
HEALTH = "health"

LAYER_GROUPS: tuple[str, ...] = (ACTIVATIONS, GRADIENTS, BACKPROP, PARAMETERS, UPDATES, SHIFT, ICS)
GROUPS: tuple[str, ...] = (*LAYER_GROUPS, HEALTH)

#: The model-wide statistics the collector logs under ``health/``, in the dashboards' order.
HEALTH_STATS: tuple[str, ...] = (
    "grad_norm_total",
    # the largest grad_norm_total of the optimizer steps since the previous logging step (that
    # step excluded, this one included): a spike between two logging steps shows at the next
    "grad_norm_total_max",
    "param_norm_total",
    "update_ratio_total",
    "backprop_depth_log10",
    "nonfinite_grads",
    # how many optimizer steps of that window had a non-finite total gradient norm
    "nonfinite_grad_steps",
    "nonfinite_activations",
)

#: Images (depth × step heat maps) live under this top-level name, outside the scalar grammar.
HEATMAPS = "heatmaps"
#: ``heatmaps/backprop_log10_norm``: log10 of ``backprop/norm`` per layer and logging step.
HEATMAP_BACKPROP = "backprop_log10_norm"
#: ``heatmaps/activation_std``: ``activations/std`` per layer and logging step.
HEATMAP_ACTIVATION_STD = "activation_std"
#: ``heatmaps/depth_profile``: four statistics against layer index, at step 0 and the latest step.
DEPTH_PROFILE = "depth_profile"
#: The run's text summary (selected layers, options, NormSwap report).
SUMMARY_TEXT_TAG = "diagnostics/summary"
#: The diagnosis: a markdown table of findings (``ln_diagnostics.diagnose``).
DIAGNOSIS_TEXT_TAG = "diagnosis"
#: The layers in forward order and the batch size, as JSON, for ``ln-diagnostics diagnose``.
LAYERS_TEXT_TAG = "diagnostics/layers"
#: ``health/backprop_depth_log10_step0``: the depth at step 0, written again at every logging step
#: so that it stays in the chart's view; also an HParams metric.
DEPTH_STEP0 = "backprop_depth_log10_step0"
#: Dashboard views in log10 (custom-scalars charts have no log axis): ``log10/{quantity}`` for a
#: model-wide total, ``log10/{quantity}/{role}`` for one layer of the hidden stack.
LOG10 = "log10"
#: The layers of the hidden stack that a bounded chart shows, one line each.
STACK_ROLES: tuple[str, ...] = ("first", "middle", "last", "worst")


class ParsedTag(NamedTuple):
    """A tag split into its parts; ``layer`` is ``None`` for ``health/`` tags."""

    group: str
    stat: str
    layer: str | None


def tag(group: str, stat: str, layer: str, *, prefix: str = "") -> str:
    """Build a per-layer tag ``{prefix}{group}/{stat}/{layer}``.

    ``layer`` is the module's qualified name from ``named_modules()``; the root module (empty
    name) is spelled ``<root>``. ``prefix`` (e.g. ``"val/"``) namespaces a whole run phase.
    """
    if group not in LAYER_GROUPS:
        raise ValueError(f"group must be one of {', '.join(LAYER_GROUPS)}; got {group!r}")
    return f"{prefix}{group}/{stat}/{layer_name(layer)}"


def layer_name(name: str) -> str:
    """The layer part of a tag for a module's qualified name: the root module (``""``) is
    spelled ``<root>``."""
    return name or "<root>"


def health_tag(stat: str, *, prefix: str = "") -> str:
    """Build a model-wide tag ``{prefix}health/{stat}``."""
    return f"{prefix}{HEALTH}/{stat}"


def heatmap_tag(name: str, *, prefix: str = "") -> str:
    """Build an image tag ``{prefix}heatmaps/{name}``."""
    return f"{prefix}{HEATMAPS}/{name}"


def log10_tag(quantity: str, role: str | None = None, *, prefix: str = "") -> str:
    """Build a log10 view tag: ``{prefix}log10/{quantity}`` or ``{prefix}log10/{quantity}/{role}``.

    Example:
        >>> log10_tag("backprop_norm", "first"), log10_tag("grad_norm_total")
        ('log10/backprop_norm/first', 'log10/grad_norm_total')
    """
    base = f"{prefix}{LOG10}/{quantity}"
    return base if role is None else f"{base}/{role}"


def log10_regex(quantity: str, *, roles: bool, prefix: str = "") -> str:
    """A regular expression matching one log10 view: every role's tag, or the single total."""
    base = re.escape(log10_tag(quantity, prefix=prefix))
    return f"^{base}/({'|'.join(STACK_ROLES)})$" if roles else f"^{base}$"


def stat_regex(group: str, stat: str, *, prefix: str = "") -> str:
    """A regular expression matching the tags of one statistic of every layer.

    For ``health`` it matches the single model-wide tag. Used by custom-scalars charts, which
    select their lines by regex.
    """
    if group == HEALTH:
        return f"^{re.escape(health_tag(stat, prefix=prefix))}$"
    if group not in LAYER_GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}; got {group!r}")
    return f"^{re.escape(f'{prefix}{group}/{stat}/')}.+$"


def parse_tag(value: str) -> ParsedTag | None:
    """Split a tag written by this package; ``None`` when it does not follow the grammar.

    One leading phase prefix such as ``val/`` is dropped.
    """
    group, _, rest = value.partition("/")
    if group not in GROUPS and rest:
        group, _, rest = rest.partition("/")
    if group == HEALTH and rest and "/" not in rest:
        return ParsedTag(HEALTH, rest, None)
    stat, _, layer = rest.partition("/")
    if group in LAYER_GROUPS and stat and layer:
        return ParsedTag(group, stat, layer)
    return None


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that orders the numbers inside names by value: ``net.2`` before ``net.10``.

    Every list of layers or tags the CLI and the callbacks print is sorted with it.

    Example:
        >>> sorted(["gradients/norm/net.10", "gradients/norm/net.2"], key=natural_key)
        ['gradients/norm/net.2', 'gradients/norm/net.10']
    """
    # re.split with a group alternates text and digit runs, so items at the same position
    # are always both str or both int
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


def clip(text: str, width: int | None, *, keep: str = "end", ellipsis: str = "...") -> str:
    """``text`` cut to ``width`` characters with ``ellipsis`` where it was cut.

    Layer and tag names keep their end (the most specific part); other text (``keep="start"``)
    its start. ``width=None`` leaves the text whole.

    Example:
        >>> clip("model.bert.encoder.layer.11.attention.self.query", 20)
        '...ention.self.query'
        >>> clip("run a (latest values)", 10, keep="start", ellipsis="…")
        'run a (la…'
    """
    if width is None or len(text) <= width:
        return text
    if keep == "end":
        return ellipsis + text[len(text) - width + len(ellipsis) :]
    return text[: width - len(ellipsis)] + ellipsis


def matches(name: str, globs: Iterable[str], *, subtree: bool = False) -> bool:
    """Whether ``name`` (a tag, a module name or a finding kind) matches one of ``globs``.

    Globs are :func:`fnmatch.fnmatchcase` patterns: case-sensitive, ``*`` also crosses ``.`` and
    ``/``. With ``subtree=True`` a glob that names a module's ancestor matches the module too, so
    ``"encoder"`` stands for ``encoder.layers.0.linear1``.

    Example:
        >>> matches("gradients/norm/net.3", ["gradients/*"])
        True
        >>> name = "encoder.layers.0"
        >>> matches(name, ["encoder"]), matches(name, ["encoder"], subtree=True)
        (False, True)
    """
    patterns = tuple(globs)
    names = [name]
    if subtree:
        parts = name.split(".")
        names += [".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
    return any(fnmatchcase(n, pattern) for n in names for pattern in patterns)
