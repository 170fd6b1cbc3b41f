"""Aggregate per-layer statistics per block, to keep the tag count of very large models in check.

A *block* is a module-name prefix: with depth 2, ``encoder.layers.3.linear1`` belongs to
``encoder.layers``, with depth 3 to ``encoder.layers.3``; names with fewer parts are their own
block. Statistics are merged honestly, on the host, from the same numbers the per-layer values come
from:

* activation moments: the power sums of every output of the block, re-centred exactly to one
  common shift and added, so mean, std, rms, kurtosis and zero fraction describe the pooled
  outputs of the block's watched modules; absmax is the maximum; ``saturated_frac`` counts
  saturated tanh/sigmoid outputs among all the block's watched outputs;
* gradient, parameter and update norms: the norm of the block's parameters taken together
  (root of the sum of squares, each parameter once); ratios are recomputed from those norms;
* backprop norm: root of the sum of squares of the members' output-gradient norms;
* histograms: bucket counts added.

Example:
    >>> block_names(["encoder.layers.0.linear1", "encoder.layers.1.norm", "head"], depth=2)
    {'encoder.layers.0.linear1': 'encoder.layers', 'encoder.layers.1.norm': 'encoder.layers', \
'head': 'head'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ln_diagnostics.collect.reduce import Chunks, Layers

__all__ = ["Grouping", "block_name", "block_names"]

#: Chunk kinds whose key is the layer index (``act``'s key is ``(index, n)``).
_PER_MODULE = ("act_hf", "act_hc", "bp", "grad_hf", "grad_hc")


def block_name(name: str, depth: int) -> str:
    """The first ``depth`` dotted parts of ``name``.

    Example:
        >>> block_name("encoder.layers.3.linear1", 3)
        'encoder.layers.3'
    """
    return ".".join(name.split(".")[:depth])


def block_names(names: Sequence[str], *, depth: int) -> dict[str, str]:
    """Map every layer name to its block name."""
    return {name: block_name(name, depth) for name in names}


class Grouping:
    """The block view of the logged layers: group names, parameters and saturation per group.

    Args:
        layers: the logged layers, in the collector's index order.
        mapping: layer name → block name; layers missing from it stay on their own.
    """

    def __init__(self, layers: Layers, mapping: Mapping[str, str]) -> None:
        self.group_names: list[str] = [mapping.get(name, name) for name in layers.names]
        self.names: list[str] = list(dict.fromkeys(self.group_names))
        position = {name: g for g, name in enumerate(self.names)}
        self.index: list[int] = [position[name] for name in self.group_names]
        params: list[set[int]] = [set() for _ in self.names]
        kinds: list[Any] = [None] * len(self.names)
        for i, g in enumerate(self.index):
            params[g].update(layers.params[i])
            kinds[g] = kinds[g] or layers.saturation[i]
        #: the groups as the reduction sees them
        self.layers = Layers(self.names, kinds, [sorted(js) for js in params])

    def view(self, chunks: Chunks, order: Sequence[int]) -> tuple[Layers, list[int]]:
        """Re-key ``chunks`` (in place) by group; the groups and their forward order.

        ``order`` is the layers' forward order; a group comes where its first member does. The
        reduction re-centres activation sums that carry different shifts, so the rows of a
        group's members add up exactly.
        """
        chunks["act"] = [((self.index[i], n), row) for (i, n), row in chunks.get("act", [])]
        for kind in _PER_MODULE:
            chunks[kind] = [(self.index[i], v) for i, v in chunks.get(kind, [])]
        return self.layers, list(dict.fromkeys(self.index[i] for i in order))
