"""The hidden stack of a network and its backprop depth profile: one definition for the
collector's ``health/backprop_depth_log10``, the dashboards and the diagnosis.

The *hidden stack* is the run of watched layers, in forward order, strictly between the first and
the last layer that own parameters: the input projection or embedding and the output head are
left out, because their gradients differ from the stack's for reasons that have nothing to do
with depth (a head sees the loss directly, an embedding gets sparse rows). Where fewer than two
layers lie between them, the whole forward order is used.

Example:
    >>> layers = [("embed", True), ("0", True), ("1", False), ("2", True), ("head", True)]
    >>> hidden_stack(layers)
    [1, 2, 3]
    >>> depth_log10([1e-3, 1e-2, 1e-1])
    -2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["depth_log10", "hidden_stack"]


def hidden_stack(layers: Sequence[tuple[str, bool]]) -> list[int]:
    """Indices of the hidden stack in ``layers``, ``(name, has_parameters)`` in forward order."""
    owners = [i for i, (_, has_params) in enumerate(layers) if has_params]
    if len(owners) >= 2 and owners[-1] - owners[0] - 1 >= 2:
        return list(range(owners[0] + 1, owners[-1]))
    return list(range(len(layers)))


def depth_log10(norms: Sequence[float]) -> float | None:
    """log10(first / last) of backprop norms in forward order: < 0 vanishing toward the input.

    ``None`` when there are fewer than two norms or an end is zero or negative; a NaN end gives NaN
    (a non-finite gradient must reach the log).
    """
    if len(norms) < 2:
        return None
    first, last = norms[0], norms[-1]
    if math.isnan(first) or math.isnan(last):
        return math.nan
    if first <= 0 or last <= 0:
        return None
    return math.log10(first / last)
