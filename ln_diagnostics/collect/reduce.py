"""The host side of a logging step: every rank's packed vector in, the step's report out.

The collector gathers one vector per rank (laid out by :class:`~ln_diagnostics.collect.packing.
Layout`) and hands the host copy to :meth:`Reduction.report` with what the numbers refer to: the
logged layers (:class:`Layers`), the forward order of this rank's modules and, when statistics
are reported per block, the :class:`~ln_diagnostics.collect.grouping.Grouping`. The reduction
merges the ranks' rows (sums added, activation sums re-centred to one shift, parameter norms
combined from the parts each rank counted) and turns them into tagged scalars and histograms.

Example:
    >>> import torch
    >>> from ln_diagnostics.collect.packing import Layout, pack
    >>> layout = Layout(modules=1, params=1, hist_buckets=0)
    >>> parts = {name: torch.zeros(rows, width) for name, rows, width in layout.blocks()}
    >>> parts["norms"] = torch.tensor([[3.0, 4.0, -1.0]])  # grad, param and (no) update norm
    >>> layers = Layers(names=["fc"], saturation=[None], params=[[0]])
    >>> report = Reduction().report([pack(layout, parts).tolist()], layout, step=0,
    ...                             layers=layers, forward=[])
    >>> report.scalars["gradients/ratio/fc"], report.scalars["health/grad_norm_total"]
    (0.75, 3.0)
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ln_diagnostics.collect.packing import HISTOGRAM, NORMS, Layout, Status, rank, split
from ln_diagnostics.collect.records import Histogram, StepReport
from ln_diagnostics.diagnose.depth import depth_log10, hidden_stack
from ln_diagnostics.stats.moments import Moments, Saturation, finalize, reshift
from ln_diagnostics.tags import (
    ACTIVATIONS,
    BACKPROP,
    GRADIENTS,
    PARAMETERS,
    UPDATES,
    health_tag,
    tag,
)

if TYPE_CHECKING:
    from ln_diagnostics.collect.grouping import Grouping

__all__ = ["Chunks", "Layers", "Reduction"]

#: A step's rows by kind (``act``, ``bp``, ``param``, ``grad``, ``update``, ``act_hf``/``act_hc``
#: and ``grad_hf``/``grad_hc`` for histogram floats and counts): ``(key, values)`` pairs whose key
#: starts with the layer index where the kind is per layer.
Chunks = dict[str, list[tuple[Any, list[float]]]]


@dataclass(frozen=True)
class Layers:
    """The logged layers, in index order: what the packed rows' indices refer to.

    Args:
        names: layer names as they appear in tags (the watched modules first, then the owners of
            parameters no watched module holds; or the block names of a grouping).
        saturation: each layer's saturation kind (``None`` for unbounded outputs).
        params: each layer's parameter indices (rows of the ``norms`` block).
    """

    names: Sequence[str]
    saturation: Sequence[Saturation | None]
    params: Sequence[Sequence[int]]

    @property
    def watched_params(self) -> list[int]:
        """The parameters of any layer, in index order (the ones with an update norm)."""
        return sorted({j for js in self.params for j in js})


class Reduction:
    """Turns gathered rows into a :class:`StepReport`; keeps the tag cache and what it warned.

    Args:
        tag_prefix: prepended to every tag (e.g. ``"val/"``).
    """

    def __init__(self, *, tag_prefix: str = "") -> None:
        self.tag_prefix = tag_prefix
        self._tags: dict[tuple[str, str, str], str] = {}
        self._warned: set[str] = set()

    def report(
        self,
        ranks: list[list[float]],
        layout: Layout,
        *,
        step: int,
        layers: Layers,
        forward: Sequence[int],
        grouping: Grouping | None = None,
        limits: Sequence[float] = (),
    ) -> StepReport | None:
        """The step's report from every rank's host vector (``None`` when a rank lost the step).

        Args:
            ranks: each rank's vector, in rank order.
            layout: the vectors' layout.
            step: the step, for the report and for warnings.
            layers: what the rows' layer and parameter indices refer to.
            forward: this rank's watched modules in the order of their first call.
            grouping: report per block instead of per layer.
            limits: right bucket edges of the histogram buckets (on histogram steps).
        """
        statuses = [Status(int(values[0])) for values in ranks]
        worst = max(statuses)
        others = [r for r, status in enumerate(statuses) if status and r != rank()]
        if others:
            self._warn_once(
                "another rank",
                f"ln-diagnostics: rank {others[0]} could not measure all of step {step} (its "
                "own warning says why); what it did not measure is not logged for such steps, "
                "training goes on.",
                depth=3,
            )
        if worst == Status.STEP_LOST:
            return None
        chunks, order = _chunks(ranks, layout, layers.watched_params, forward)
        if worst == Status.GRADIENTS_LOST:
            for kind in ("param", "grad", "update", "grad_hf", "grad_hc", "window"):
                chunks[kind] = []
        if grouping is not None:
            layers, order = grouping.view(chunks, order)
        scalars: dict[str, float] = {}
        histograms: dict[str, Histogram] = {}
        self._activation_scalars(chunks, layers, order, step, scalars)
        self._gradient_scalars(chunks, layers, step, scalars)
        self._window_scalars(chunks, scalars)
        for kind, group in (("act", ACTIVATIONS), ("grad", GRADIENTS)):
            floats, counts = chunks[f"{kind}_hf"], chunks[f"{kind}_hc"]
            for i, hist in _merge_histograms(floats, counts, limits):
                histograms[self._tag(group, "hist", layers.names[i])] = hist
        return StepReport(step, scalars, histograms)

    # ------------------------------------------------------------------ tags and warnings
    def _tag(self, group: str, stat: str, name: str) -> str:
        key = (group, stat, name)  # by name: per-layer and grouped reports share the cache
        cached = self._tags.get(key)
        if cached is None:
            cached = self._tags[key] = tag(group, stat, name, prefix=self.tag_prefix)
        return cached

    def _health(self, stat: str) -> str:
        return health_tag(stat, prefix=self.tag_prefix)

    def _warn_once(self, key: str, message: str, *, depth: int) -> None:
        """Warn once per ``key``; ``depth`` is the number of frames from this method's caller up
        to the code that called ``Collector.end_step``, where the warning points."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=depth + 2)

    def _warn_nonfinite(self, what: str, step: int, name: str) -> None:
        self._warn_once(
            what,
            f"ln-diagnostics: non-finite {what} at step {step}; the first layer in forward "
            f"order that produced them is '{name}'.",
            depth=5,
        )

    # ------------------------------------------------------------------ statistics
    def _activation_scalars(
        self,
        chunks: Chunks,
        layers: Layers,
        order: Sequence[int],
        step: int,
        scalars: dict[str, float],
    ) -> None:
        moments: dict[int, Moments] = {}
        for (i, n), row in chunks["act"]:
            if i in moments and row[0] != moments[i].shift:
                row = reshift(row, n, moments[i].shift)  # rows from another rank
            m = Moments.from_row(row, n)
            if i in moments:
                moments[i].merge(m)
            else:
                moments[i] = m
        nonfinite_total = 0.0
        first_bad: int | None = None
        for i in order:
            if i not in moments:
                continue
            stats = finalize(moments[i], saturation=layers.saturation[i] is not None)
            for stat, value in stats.items():
                scalars[self._tag(ACTIVATIONS, stat, layers.names[i])] = value
            nonfinite_total += stats["nonfinite"]
            if stats["nonfinite"] and first_bad is None:
                first_bad = i
        if moments:
            scalars[self._health("nonfinite_activations")] = nonfinite_total
        if first_bad is not None:
            self._warn_nonfinite("activations", step, layers.names[first_bad])

        squares: dict[int, float] = defaultdict(float)
        for i, (sum_sq,) in chunks["bp"]:
            squares[i] += sum_sq
        norms = {i: math.sqrt(squares[i]) for i in order if i in squares}
        for i, norm in norms.items():
            scalars[self._tag(BACKPROP, "norm", layers.names[i])] = norm
        forward = list(norms)  # forward order; embedding and head left out, as in the diagnosis
        stack = hidden_stack([(layers.names[i], bool(layers.params[i])) for i in forward])
        depth = depth_log10([norms[forward[k]] for k in stack])
        if depth is not None:  # NaN passes: a non-finite gradient must reach the log
            scalars[self._health("backprop_depth_log10")] = depth

    def _gradient_scalars(
        self, chunks: Chunks, layers: Layers, step: int, scalars: dict[str, float]
    ) -> None:
        if not chunks["param"]:
            return
        param_norms = chunks["param"][0][1]
        grad_sq: dict[int, float] = {}
        if chunks["grad"]:
            present, norms = chunks["grad"][0]
            grad_sq = {j: g * g for j, g in zip(present, norms, strict=True)}
        update_sq: dict[int, float] = {}
        if chunks["update"]:
            norms = chunks["update"][0][1]
            update_sq = {j: u * u for j, u in zip(layers.watched_params, norms, strict=True)}

        bad_grads = sum(1 for g in grad_sq.values() if not math.isfinite(g))
        first_bad: int | None = None
        for i, js in enumerate(layers.params):
            if not js:
                continue
            name = layers.names[i]
            p_norm = math.sqrt(sum(param_norms[j] ** 2 for j in js))
            scalars[self._tag(PARAMETERS, "norm", name)] = p_norm
            with_grad = [j for j in js if j in grad_sq]
            if with_grad:
                g_norm = math.sqrt(sum(grad_sq[j] for j in with_grad))
                scalars[self._tag(GRADIENTS, "norm", name)] = g_norm
                if p_norm != 0:  # NaN passes: a non-finite ratio must reach the log
                    scalars[self._tag(GRADIENTS, "ratio", name)] = g_norm / p_norm
                if not math.isfinite(g_norm) and first_bad is None:
                    first_bad = i
            if update_sq and p_norm != 0:
                u_norm = math.sqrt(sum(update_sq[j] for j in js))
                scalars[self._tag(UPDATES, "ratio", name)] = u_norm / p_norm
        total_param = math.sqrt(sum(v * v for v in param_norms))
        scalars[self._health("param_norm_total")] = total_param
        if grad_sq:
            scalars[self._health("grad_norm_total")] = math.sqrt(sum(grad_sq.values()))
        scalars[self._health("nonfinite_grads")] = float(bad_grads)
        if update_sq and total_param != 0:
            scalars[self._health("update_ratio_total")] = (
                math.sqrt(sum(update_sq.values())) / total_param
            )
        if first_bad is not None:
            self._warn_nonfinite("gradients", step, layers.names[first_bad])

    def _window_scalars(self, chunks: Chunks, scalars: dict[str, float]) -> None:
        """The window sentinels: the largest total gradient norm of the steps since the previous
        logging step (NaN if one was NaN) and how many of them had a non-finite one."""
        if not chunks["window"]:
            return
        norms = [math.sqrt(squares) for squares in chunks["window"][0][1]]
        largest = math.nan if any(map(math.isnan, norms)) else max(norms)
        scalars[self._health("grad_norm_total_max")] = largest
        bad = sum(1 for norm in norms if not math.isfinite(norm))
        scalars[self._health("nonfinite_grad_steps")] = float(bad)


def _window(blocks: list[dict[str, list[list[float]]]]) -> list[float] | None:
    """Each step's total squared gradient norm since the previous logging step (the steps where
    some rank read a gradient), or ``None`` when a rank failed to read one of the steps."""
    steps = list(zip(*(block["window"] for block in blocks), strict=True))  # per step, per rank
    if any(tensors < 0 for step in steps for _, tensors in step):
        return None
    return [sum(sq for sq, _ in step) for step in steps if sum(t for _, t in step) > 0]


def _chunks(
    ranks: list[list[float]], layout: Layout, watched: list[int], forward: Sequence[int]
) -> tuple[Chunks, list[int]]:
    """Rows of every rank's slots, keyed by kind; parameter norms merged across ranks; and the
    layers in forward order (this rank's first calls, then modules that ran on other ranks only).

    Output gradients are those of each rank's own loss; DDP and FSDP average the ranks'
    gradients, so the backprop norms are divided by the world size to be those of the
    averaged loss (on equal batches, the loss of the union batch), like the gradient norms.
    """
    chunks: Chunks = defaultdict(list)
    blocks = [split(values, layout) for values in ranks]  # the status is read before
    world_squared = len(ranks) ** 2
    for block in blocks:
        for i, row in enumerate(block["act"]):
            if row[0] > 0:
                chunks["act"].append(((i, int(row[0])), row[1:]))
        for i, (squares, calls) in enumerate(block["bp"]):
            if calls > 0:
                chunks["bp"].append((i, [squares / world_squared]))  # Σ‖g‖² of the calls
        for kind in ("act", "grad"):  # no such blocks without histograms
            for i, row in enumerate(block.get(f"{kind}_hist", [])):
                head, bucket = row[: len(HISTOGRAM)], row[len(HISTOGRAM) :]
                if any(bucket):
                    chunks[f"{kind}_hf"].append((i, head))
                    chunks[f"{kind}_hc"].append((i, bucket))
    grad, param, update = (
        _merge_ranks([b["norms"] for b in blocks], NORMS.index(column)) for column in NORMS
    )
    if any(v != -1.0 for v in param):
        chunks["param"].append((None, param))
        present = [j for j, g in enumerate(grad) if g != -1.0]
        if present:
            chunks["grad"].append((present, [grad[j] for j in present]))
        if any(update[j] != -1.0 for j in watched):
            chunks["update"].append((None, [update[j] for j in watched]))
    window = _window(blocks)
    if window:
        chunks["window"].append((None, window))
    seen = {key[0] for key, _ in chunks["act"]}
    seen |= {i for i, _ in chunks["bp"]}
    return chunks, [*forward, *sorted(seen - set(forward))]


def _merge_ranks(rows_per_rank: list[list[list[float]]], column: int) -> list[float]:
    """One norm per parameter: the root of the sum of squares of the parts the ranks counted
    (a replicated tensor on one rank, each element of a sharded one on one rank), −1 where
    no rank counted one."""
    merged = []
    for rows in zip(*rows_per_rank, strict=True):
        parts = [row[column] for row in rows if row[column] != -1.0]
        merged.append(math.hypot(*parts) if parts else -1.0)
    return merged


def _merge_histograms(
    floats: list[tuple[Any, list[float]]],
    counts: list[tuple[Any, list[float]]],
    limits: Sequence[float],
) -> list[tuple[int, Histogram]]:
    merged: dict[int, tuple[list[float], list[float]]] = {}
    for (i, (lo, hi, total, squares)), (_, bucket) in zip(floats, counts, strict=True):
        if i in merged:
            head, acc = merged[i]
            head[0], head[1] = min(head[0], lo), max(head[1], hi)
            head[2] += total
            head[3] += squares
            for b, c in enumerate(bucket):
                acc[b] += c
        else:
            merged[i] = ([lo, hi, total, squares], list(bucket))
    out = []
    for i, (head, bucket) in merged.items():
        used = [b for b, c in enumerate(bucket) if c]
        if not used:
            continue
        lo_b, hi_b = used[0], used[-1] + 1
        out.append(
            (
                i,
                Histogram(
                    min=head[0],
                    max=head[1],
                    num=float(sum(bucket)),
                    sum=head[2],
                    sum_squares=head[3],
                    bucket_limit=list(limits[lo_b:hi_b]),
                    bucket=bucket[lo_b:hi_b],
                ),
            )
        )
    return out
