"""The diagnosis rules: logged series and run info in, ranked findings out.

Each rule reads a few statistics per logging step, decides per step (and per layer) whether its
condition holds, and merges what it found into one :class:`Finding` per kind and run of
consecutive layers, spanning the steps at which it held. Thresholds are in :class:`Thresholds`.

Example:
    >>> from ln_diagnostics.diagnose.runinfo import LayerInfo, RunInfo
    >>> layers = [LayerInfo(n, "Linear", True) for n in ("in", "a", "b", "c", "out")]
    >>> series = {f"backprop/norm/{n}": [(0, v)] for n, v in zip("abc", (1e-5, 1e-3, 1e-1))}
    >>> [(f.kind, f.layer, round(f.value, 1)) for f in diagnose(series, RunInfo(tuple(layers)))]
    [('vanishing_gradients', 'a … b (2 layers)', -4.0)]
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ln_diagnostics.diagnose.depth import depth_log10, hidden_stack
from ln_diagnostics.diagnose.findings import Finding, Severity, rank
from ln_diagnostics.diagnose.history import Columns, History, relevant
from ln_diagnostics.diagnose.runinfo import RunInfo
from ln_diagnostics.diagnose.thresholds import Thresholds
from ln_diagnostics.tags import (
    ACTIVATIONS,
    BACKPROP,
    GRADIENTS,
    HEALTH,
    SHIFT,
    UPDATES,
    ParsedTag,
    parse_tag,
    tag,
)

#: Every finding kind, in the order findings of equal severity and first step are listed.
KINDS: tuple[str, ...] = (
    "nonfinite",
    "vanishing_gradients",
    "exploding_gradients",
    "gradient_growth",
    "dead_units",
    "saturated_units",
    "collapsed_activations",
    "zero_gradients",
    "update_ratio_small",
    "update_ratio_large",
    "gradient_spike",
    "batchnorm_small_batch",
    "shift_not_settling",
    "healthy",
)

#: Module types whose outputs are exactly zero for negative inputs.
RELU_FAMILY = frozenset({"ReLU", "ReLU6", "RReLU", "Threshold"})

ADVICE: dict[str, str] = {
    "nonfinite": "lower the learning rate or clip gradients (Pascanu et al. 2013); look for "
    "log(0) or division by zero in the loss",
    "vanishing_gradients": "add LayerNorm after each hidden layer (Ba et al. 2016) or "
    "NormSwap(target='layernorm'); residual connections (He et al. 2016)",
    "exploding_gradients": "clip gradients or lower the learning rate (Pascanu et al. 2013); add "
    "normalization (Ba et al. 2016)",
    "gradient_growth": "in a Post-LN transformer put the norm first (norm_first=True) or warm "
    "the learning rate up (Xiong et al. 2020)",
    "dead_units": "lower the learning rate, re-initialize the bias, or use LeakyReLU/GELU "
    "(Lu et al. 2019, 'Dying ReLU and initialization')",
    "saturated_units": "normalize the pre-activation (Ba et al. 2016) or scale the init "
    "(Glorot & Bengio 2010)",
    "collapsed_activations": "the output is constant and carries no signal: check the layer's "
    "input and initialization (Glorot & Bengio 2010)",
    "zero_gradients": "exactly zero gradient: the parameters do not reach the loss, or a dead "
    "path lies behind them; remove them or fix the path",
    "update_ratio_small": "update/weight far below ~1e-3 (Karpathy, CS231n): raise the learning "
    "rate, or check the layer is not frozen by accident",
    "update_ratio_large": "update/weight far above ~1e-3 (Karpathy, CS231n): lower the learning "
    "rate or add warm-up",
    "gradient_spike": "clip gradients (Pascanu et al. 2013) or lower the learning rate; inspect "
    "the batches of those steps",
    "batchnorm_small_batch": "batch statistics of so few samples are noisy: "
    "NormSwap(target='layernorm') (Ba et al. 2016) or GroupNorm (Wu & He 2018)",
    "shift_not_settling": "layer inputs keep moving (Ioffe & Szegedy 2015): lower or decay the "
    "learning rate, or add normalization",
    "healthy": "nothing to do",
}

#: ``batchnorm_small_batch``'s advice when only the validation batch is small.
EVAL_BATCH_ADVICE = (
    "one sample at a time BatchNorm has only its running statistics (in train mode it fails): "
    "NormSwap(target='layernorm') normalizes each sample alike in training and evaluation "
    "(Ba et al. 2016)"
)

Series = Sequence[tuple[int, float]]


@functools.lru_cache(maxsize=65536)
def _training_tag(name: str) -> ParsedTag | None:
    """The parts of a training tag (``val/...`` and foreign tags give ``None``), cached."""
    parsed = parse_tag(name)
    return parsed if parsed is not None and name.startswith(parsed.group + "/") else None


class _Stat:
    """One statistic of every layer that logged it: ``values[row, column]`` (NaN where absent)
    and ``present``, rows in forward order, columns the run's logging steps."""

    def __init__(self, names: list[str], values: np.ndarray, present: np.ndarray) -> None:
        self.names = names
        self.values = values
        self.present = present
        self.row = {name: r for r, name in enumerate(names)}

    def rows(self, names: Sequence[str]) -> _Stat:
        """The rows of ``names`` that logged the statistic, in the order given."""
        keep = [self.row[n] for n in names if n in self.row]
        return _Stat([self.names[r] for r in keep], self.values[keep], self.present[keep])

    def aligned(self, names: Sequence[str]) -> np.ndarray:
        """The values of ``names``' rows, NaN rows for names that did not log the statistic."""
        out = np.full((len(names), self.values.shape[1]), np.nan)
        for k, name in enumerate(names):
            if name in self.row:
                out[k] = self.values[self.row[name]]
        return out

    def at(self, name: str, column: int, default: float = math.nan) -> float:
        r = self.row.get(name)
        return (
            default if r is None or not self.present[r, column] else float(self.values[r, column])
        )


class _Run:
    """The series of one run as matrices per statistic (layers × logging steps)."""

    def __init__(self, columns: Columns, info: RunInfo) -> None:
        self.info = info
        steps, by_tag = columns
        self.steps: list[int] = steps.tolist()
        self.column = {step: c for c, step in enumerate(self.steps)}
        width = len(self.steps)
        self.health: dict[str, list[tuple[int, float]]] = {}
        order = {layer.name: k for k, layer in enumerate(info.layers)}
        raw: dict[tuple[str, str], list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for name, (positions, values) in by_tag.items():
            parsed = _training_tag(name)
            if parsed is None:
                continue
            if parsed.layer is None:
                self.health[parsed.stat] = list(
                    zip(steps[positions].tolist(), values.tolist(), strict=True)
                )
            else:
                raw.setdefault((parsed.group, parsed.stat), []).append(
                    (parsed.layer, positions, values)
                )
                order.setdefault(parsed.layer, len(order))
        self.order = list(order)
        self.types = {layer.name: layer.type for layer in info.layers}
        self._stats: dict[tuple[str, str], _Stat] = {}
        for key, rows in raw.items():
            rows.sort(key=lambda row: order[row[0]])
            matrix = np.full((len(rows), width), np.nan)
            present = np.zeros((len(rows), width), dtype=bool)
            for r, (_, positions, values) in enumerate(rows):
                matrix[r, positions] = values
                present[r, positions] = True
            self._stats[key] = _Stat([row[0] for row in rows], matrix, present)

    def stat(self, group: str, stat: str) -> _Stat:
        empty = _Stat([], np.empty((0, len(self.steps))), np.empty((0, len(self.steps)), bool))
        return self._stats.get((group, stat), empty)

    def with_stat(self, group: str, stat: str) -> list[str]:
        """Layers that logged ``group/stat``, in forward order."""
        return list(self.stat(group, stat).names)


def _span(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} layers)"


def _consecutive(candidates: Sequence[str], hits: Mapping[str, Any]) -> list[list[str]]:
    """Runs of hit layers that are adjacent among ``candidates``."""
    runs: list[list[str]] = []
    previous = -2
    for k, name in enumerate(candidates):
        if name in hits:
            if k == previous + 1:
                runs[-1].append(name)
            else:
                runs.append([name])
            previous = k
    return runs


def _per_layer(
    run: _Run,
    kind: str,
    severity: Severity,
    group: str,
    stat: str,
    candidates: Sequence[str],
    holds: Callable[[_Stat], np.ndarray],
    describe: Callable[[str, float, int], str],
    *,
    lowest: bool = False,
    persistence: float = 0.0,
) -> list[Finding]:
    """One finding per run of consecutive ``candidates`` whose ``group/stat`` met ``holds``.

    ``holds(stat)`` gives a boolean matrix over ``stat.values``; a layer counts when it held at
    ``persistence`` or more of its logged steps (and at least one). The evidence names the worst
    point: the highest value, or the lowest with ``lowest``.
    """
    data = run.stat(group, stat).rows(candidates)
    with np.errstate(invalid="ignore"):
        held = holds(data) & data.present
    counts = held.sum(axis=1)
    enough = (counts > 0) & (counts >= persistence * data.present.sum(axis=1))
    hits = {data.names[r]: r for r in np.flatnonzero(enough)}
    findings = []
    for block in _consecutive(data.names, hits):
        rows = [hits[name] for name in block]
        sub = held[rows]
        score = np.where(sub, -data.values[rows] if lowest else data.values[rows], -np.inf)
        r, c = np.unravel_index(int(np.argmax(score)), score.shape)
        columns = np.flatnonzero(sub.any(axis=0))
        name, step, value = block[r], run.steps[c], float(data.values[rows[r], c])
        findings.append(
            Finding(
                kind,
                severity,
                _span(block),
                run.steps[columns[0]],
                run.steps[columns[-1]],
                value,
                describe(name, value, step),
                {
                    "tag": tag(group, stat, name),
                    "first_layer": block[0],
                    "last_layer": block[-1],
                    "worst_layer": name,
                    "worst_step": step,
                    "worst_value": value,
                    "layers": len(block),
                    "steps": len(columns),
                },
                ADVICE[kind],
            )
        )
    return findings


# ----------------------------------------------------------------------------- depth


def _stack(run: _Run) -> list[str]:
    """The hidden stack's layer names (:func:`hidden_stack`)."""
    layers = run.info.layers
    return [layers[i].name for i in hidden_stack([(x.name, x.has_params) for x in layers])]


def _profile(data: _Stat, column: int) -> list[tuple[str, float]]:
    """``(layer, backprop norm)`` of the layers in ``data`` that logged at ``column``."""
    rows = np.flatnonzero(data.present[:, column])
    return [(data.names[r], float(data.values[r, column])) for r in rows]


def _steepest(profile: Sequence[tuple[str, float]], sign: float) -> tuple[str, str, float]:
    """The adjacent pair with the steepest change toward the input, in decades."""
    best = ("", "", 0.0)
    for (a, x), (b, y) in itertools.pairwise(profile):
        if x > 0 and y > 0:
            change = math.log10(x / y)  # < 0: smaller toward the input
            if sign * change > sign * best[2]:
                best = (a, b, change)
    return best


def _depth(run: _Run, t: Thresholds) -> tuple[list[Finding], set[int]]:
    """``vanishing_gradients`` / ``exploding_gradients``, and the columns where either held."""
    data = run.stat(BACKPROP, "norm").rows(_stack(run))
    present = data.present
    n = len(data.names)
    if n < 2:
        return [], set()
    first = present.argmax(axis=0)  # per logging step: the input end and the output end
    last = n - 1 - present[::-1].argmax(axis=0)
    fired: dict[str, list[tuple[int, float]]] = {
        "vanishing_gradients": [],
        "exploding_gradients": [],
    }
    for c in np.flatnonzero(present.sum(axis=0) >= 2):
        ratio = depth_log10([data.values[first[c], c], data.values[last[c], c]])
        if ratio is None or not math.isfinite(ratio):
            continue
        if ratio <= -t.vanishing_decades:
            fired["vanishing_gradients"].append((int(c), ratio))
        elif ratio >= t.exploding_decades:
            fired["exploding_gradients"].append((int(c), ratio))
    findings = []
    for kind, hits in fired.items():
        if not hits:
            continue
        sign = -1.0 if kind == "vanishing_gradients" else 1.0
        bound = t.vanishing_decades if sign < 0 else t.exploding_decades
        column, ratio = max(hits, key=lambda h: sign * h[1])
        step, first_step = run.steps[column], run.steps[hits[0][0]]
        profile = _profile(data, column)
        out_end = profile[-1][1]
        far = [n for n, v in profile if v > 0 and sign * math.log10(v / out_end) >= bound]
        far = far or [profile[0][0]]
        a, b, change = _steepest(profile, sign)
        word = "falls" if sign < 0 else "rises"
        findings.append(
            Finding(
                kind,
                "error",
                _span(far),
                first_step,
                run.steps[hits[-1][0]],
                ratio,
                f"backprop norm {word} {abs(ratio):.2f} decades (x{10 ** abs(ratio):.3g}) from "
                f"{profile[-1][0]} to {profile[0][0]} over the hidden stack at step {step}"
                + (f" ({hits[0][1]:+.2f} at step {first_step})" if step != first_step else "")
                + f"; steepest between {a} and {b} ({abs(change):.2f} decades)",
                {
                    "tag": f"{BACKPROP}/norm/*",
                    "depth_log10": ratio,
                    "depth_log10_first": hits[0][1],
                    "worst_step": step,
                    "input_end": profile[0][0],
                    "output_end": profile[-1][0],
                    "steepest_from": a,
                    "steepest_to": b,
                    "steepest_decades": change,
                    "steps": len(hits),
                },
                ADVICE[kind],
            )
        )
    return findings, {c for hits in fired.values() for c, _ in hits}


def _blocks(run: _Run, stack: Sequence[str]) -> dict[tuple[str, str, str], dict[int, str]]:
    """Repeated blocks: sub-layers ``<prefix>.<i>.<rest>`` of one type, keyed by role."""
    roles: dict[tuple[str, str, str], dict[int, str]] = {}
    for name in stack:
        parts = name.split(".")
        digits = [k for k, part in enumerate(parts[:-1]) if part.isdigit()]
        if not digits:  # a plain stack (net.3) is the depth rule's: blocks have sub-layers
            continue
        k = digits[-1]
        role = (".".join(parts[:k]), ".".join(parts[k + 1 :]), run.types.get(name, ""))
        roles.setdefault(role, {})[int(parts[k])] = name
    return roles


def _growth(run: _Run, t: Thresholds, depth_columns: set[int]) -> list[Finding]:
    """``gradient_growth``: backprop norms rising block by block toward the output."""
    stack = _stack(run)
    norms = run.stat(BACKPROP, "norm")
    roles, growth_rows = [], []
    for (prefix, rest, _), blocks in _blocks(run, stack).items():
        lo, hi = min(blocks), max(blocks)
        if len(blocks) < t.growth_min_blocks or blocks[lo] not in norms.row:
            continue
        if blocks[hi] not in norms.row:
            continue
        a, b = (norms.row[blocks[k]] for k in (lo, hi))
        with np.errstate(divide="ignore", invalid="ignore"):
            growth = np.log10(norms.values[b] / norms.values[a])
        valid = norms.present[a] & norms.present[b] & (norms.values[a] > 0)
        valid &= (norms.values[b] > 0) & np.isfinite(growth)
        growth_rows.append(np.where(valid, growth, np.nan))
        roles.append((prefix, rest, lo, hi))
    if not roles:
        return []
    growths = np.vstack(growth_rows)
    judged = ~np.isnan(growths).all(axis=0)
    judged[list(depth_columns)] = False  # vanishing_gradients already says it
    medians = np.full(len(run.steps), -np.inf)
    if judged.any():
        medians[judged] = np.nanmedian(growths[:, judged], axis=0)
    hits = np.flatnonzero(medians >= t.growth_decades)
    if not len(hits):
        return []
    column = int(hits[np.argmax(medians[hits])])
    median, step = float(medians[column]), run.steps[column]
    at_step = growths[:, column]
    k = int(np.nanargmax(at_step))
    prefix, rest, lo, hi = roles[k]
    count = int((~np.isnan(at_step)).sum())
    pattern = f"{prefix}.*.{rest}"
    return [
        Finding(
            "gradient_growth",
            "warning",
            f"{prefix}.{lo} … {prefix}.{hi}",
            run.steps[hits[0]],
            run.steps[hits[-1]],
            median,
            f"backprop norm grows {median:.2f} decades (x{10**median:.3g}) from block {lo} to "
            f"block {hi} toward the output at step {step} (median of {count} "
            f"sub-layer{'s' if count > 1 else ''}; {pattern}: {at_step[k]:.2f})",
            {
                "tag": tag(BACKPROP, "norm", pattern),
                "median_decades": median,
                "worst_step": step,
                "blocks": hi - lo + 1,
                "sublayers": count,
                "steepest_role": pattern,
                "steepest_decades": float(at_step[k]),
                "steps": len(hits),
            },
            ADVICE["gradient_growth"],
        )
    ]


# ----------------------------------------------------------------------------- activations


def _activations(run: _Run, t: Thresholds) -> list[Finding]:
    relus = [n for n in run.with_stat(ACTIVATIONS, "zero_frac") if run.types.get(n) in RELU_FAMILY]
    dead = _per_layer(
        run,
        "dead_units",
        "warning",
        ACTIVATIONS,
        "zero_frac",
        relus,
        lambda d: d.values > t.dead_zero_frac,
        lambda n, v, s: (
            f"{v:.1%} of {n}'s outputs are exactly 0 at step {s} (bound {t.dead_zero_frac:g})"
        ),
    )
    saturated = _per_layer(
        run,
        "saturated_units",
        "warning",
        ACTIVATIONS,
        "saturated_frac",
        run.with_stat(ACTIVATIONS, "saturated_frac"),
        lambda d: d.values > t.saturated_frac,
        lambda n, v, s: (
            f"{v:.1%} of {n}'s outputs are saturated at step {s} (bound {t.saturated_frac:g})"
        ),
    )
    dead_layers = {n for f in dead for n in _members(f, relus)}
    rms = run.stat(ACTIVATIONS, "rms")
    candidates = [n for n in run.with_stat(ACTIVATIONS, "std") if n not in dead_layers]
    collapsed = _per_layer(
        run,
        "collapsed_activations",
        "warning",
        ACTIVATIONS,
        "std",
        candidates,
        lambda d: d.values <= t.collapsed_rel_std * rms.aligned(d.names),
        lambda n, v, s: (
            f"{n}'s output is constant at step {s}: std {v:.3g}, rms {rms.at(n, run.column[s]):.3g}"
        ),
        lowest=True,
    )
    return dead + saturated + collapsed


def _members(finding: Finding, candidates: Sequence[str]) -> list[str]:
    """The candidate layers a per-layer finding covers."""
    first = candidates.index(finding.evidence["first_layer"])
    return list(candidates[first : candidates.index(finding.evidence["last_layer"]) + 1])


def _nonfinite(run: _Run) -> list[Finding]:
    """``nonfinite``: the first module in forward order that produced NaN/inf, and when."""
    counts = run.stat(ACTIVATIONS, "nonfinite")
    stds = run.stat(ACTIVATIONS, "std")
    grads = run.stat(GRADIENTS, "norm")
    backprop = run.stat(BACKPROP, "norm")
    health = {stat: dict(run.health.get(stat, [])) for stat in HEALTH_NONFINITE}
    # logging steps with any sign of a non-finite value (NaN != 0 too), in one pass per matrix
    suspect = np.zeros(len(run.steps), dtype=bool)
    suspect |= ((counts.values != 0) & counts.present).any(axis=0)
    for data in (stds, grads, backprop):
        suspect |= (~np.isfinite(data.values) & data.present).any(axis=0)
    for values in health.values():
        suspect[[run.column[s] for s, v in values.items() if v != 0]] = True
    bad: list[tuple[int, str, str, float]] = []  # step, layer, tag, value
    for c in np.flatnonzero(suspect):
        step = run.steps[c]
        found = None
        for name in run.order:
            n, s = counts.at(name, c, 0.0), stds.at(name, c, 0.0)
            if n != 0 or not math.isfinite(s):
                found = (step, name, tag(ACTIVATIONS, "nonfinite", name), n)
                break
        if found is None:  # gradients only: backward runs output first, so the last layer
            for name in reversed(run.order):
                for group, data in ((BACKPROP, backprop), (GRADIENTS, grads)):
                    v = data.at(name, c, 0.0)
                    if not math.isfinite(v):
                        found = (step, name, tag(group, "norm", name), v)
                        break
                if found:
                    break
        if found is None:
            for stat, values in health.items():
                v = values.get(step, 0.0)
                if v != 0:
                    found = (step, "", f"{HEALTH}/{stat}", v)
                    break
        if found is not None:
            bad.append(found)
    if not bad:
        return []
    step, name, first_tag, value = bad[0]
    what = "activations" if first_tag.startswith(ACTIVATIONS) else "gradients"
    return [
        Finding(
            "nonfinite",
            "error",
            name,
            step,
            bad[-1][0],
            value,
            f"first non-finite {what} at step {step}"
            + (f" in {name} (the first in forward order)" if name else "")
            + f"; non-finite at {len(bad)} of {len(run.steps)} logging steps",
            {"tag": first_tag, "first_step": step, "steps": len(bad)},
            ADVICE["nonfinite"],
        )
    ]


HEALTH_NONFINITE = ("nonfinite_activations", "nonfinite_grads")


# ----------------------------------------------------------------------------- updates


def _updates(run: _Run, t: Thresholds) -> list[Finding]:
    layers = run.with_stat(UPDATES, "ratio")
    small = _per_layer(
        run,
        "update_ratio_small",
        "warning",
        UPDATES,
        "ratio",
        layers,
        lambda d: d.values < t.update_ratio_low,
        lambda n, v, s: (
            f"update/weight of {n} is {v:.3g} at step {s}, below "
            f"{t.update_ratio_low:g} at most logging steps"
        ),
        lowest=True,
        persistence=t.update_ratio_persistence,
    )
    large = _per_layer(
        run,
        "update_ratio_large",
        "warning",
        UPDATES,
        "ratio",
        layers,
        lambda d: d.values > t.update_ratio_high,
        lambda n, v, s: (
            f"update/weight of {n} is {v:.3g} at step {s}, above "
            f"{t.update_ratio_high:g} at most logging steps"
        ),
        persistence=t.update_ratio_persistence,
    )
    zero = _per_layer(
        run,
        "zero_gradients",
        "warning",
        GRADIENTS,
        "norm",
        run.with_stat(GRADIENTS, "norm"),
        lambda d: d.values == 0.0,
        lambda n, _v, s: f"the gradient of {n}'s parameters is exactly 0 at step {s}",
    )
    return small + large + zero


def _spikes(run: _Run, t: Thresholds) -> list[Finding]:
    """``gradient_spike``: the total gradient norm of a logging step, or the largest since the
    previous one (``health/grad_norm_total_max``, the window sentinel), far above the median of
    the earlier logging steps' ``health/grad_norm_total``."""
    points = run.health.get("grad_norm_total", [])
    window = dict(run.health.get("grad_norm_total_max", []))
    earlier: list[float] = []
    spikes = []
    for step, value in points:
        peak = window.get(step, value)
        worst, tag = (peak, "grad_norm_total_max") if peak > value else (value, "grad_norm_total")
        if len(earlier) >= t.spike_min_history and math.isfinite(worst):
            median = earlier[len(earlier) // 2]
            if median > 0 and worst > t.spike_factor * median:
                spikes.append((step, worst / median, worst, median, tag))
        if math.isfinite(value):
            bisect.insort(earlier, value)
    if not spikes:
        return []
    step, factor, value, median, tag = max(spikes, key=lambda s: s[1])
    where = f"at step {step}" if tag == "grad_norm_total" else f"in the steps up to {step}"
    return [
        Finding(
            "gradient_spike",
            "warning",
            "",
            spikes[0][0],
            spikes[-1][0],
            factor,
            f"total gradient norm {value:.3g} {where} is {factor:.1f}x the running median "
            f"{median:.3g}; {len(spikes)} spike{'s' if len(spikes) > 1 else ''} above "
            f"{t.spike_factor:g}x",
            {
                "tag": f"{HEALTH}/{tag}",
                "worst_step": step,
                "value": value,
                "running_median": median,
                "spikes": len(spikes),
                "spike_steps": [s for s, *_ in spikes[:20]],
            },
            ADVICE["gradient_spike"],
        )
    ]


def _batchnorm(run: _Run, t: Thresholds) -> list[Finding]:
    """``batchnorm_small_batch``: BatchNorm trained, or validated, on too few samples a device."""
    norms = [layer.name for layer in run.info.layers if "BatchNorm" in layer.type]
    train, val = run.info.batch_size, run.info.eval_batch_size
    small_train = train is not None and train < t.batchnorm_min_batch
    small_val = val is not None and val < t.batchnorm_min_eval_batch
    if not norms or not (small_train or small_val) or not run.steps:
        return []
    parts = []
    if small_train:
        parts.append(f"train on batches of {train} per device (bound {t.batchnorm_min_batch})")
    if small_val:
        parts.append(
            f"are validated on batches of {val} per device (bound {t.batchnorm_min_eval_batch})"
        )
    return [
        Finding(
            "batchnorm_small_batch",
            "warning",
            _span(norms),
            run.steps[0],
            run.steps[-1],
            float(train if small_train else val),  # type: ignore[arg-type]
            f"{len(norms)} BatchNorm layer{'s' if len(norms) > 1 else ''} " + " and ".join(parts),
            {
                "batch_size": train,
                "eval_batch_size": val,
                "batchnorm_layers": norms[:20],
                "source": "diagnostics/layers",
            },
            ADVICE["batchnorm_small_batch"] if small_train else EVAL_BATCH_ADVICE,
        )
    ]


def _shift(run: _Run, t: Thresholds) -> list[Finding]:
    """``shift_not_settling``: shift versus the previous probe is not falling over the run."""
    points = [(s, v) for s, v in run.health.get("shift_mean_step", []) if math.isfinite(v)]
    if len(points) < t.shift_min_probes:
        return []
    third = len(points) // 3
    early = statistics.median(v for _, v in points[:third])
    late_columns = [run.column[s] for s, _ in points[-third:]]
    late = statistics.median(v for _, v in points[-third:])
    if early <= 0 or late < t.shift_settle_ratio * early:
        return []
    per_layer = run.stat(SHIFT, "mean_step")
    largest = max(
        (
            (statistics.median(vs), name)
            for r, name in enumerate(per_layer.names)
            if (
                vs := per_layer.values[r, late_columns][per_layer.present[r, late_columns]].tolist()
            )
        ),
        default=(math.nan, ""),
    )
    return [
        Finding(
            "shift_not_settling",
            "info",
            largest[1],
            points[0][0],
            points[-1][0],
            late / early,
            f"shift vs the previous probe is {late / early:.2f}x its early level over the last "
            f"third of {len(points)} probes (median {late:.3g} vs {early:.3g}); largest in "
            f"{largest[1] or '?'} ({largest[0]:.3g})",
            {
                "tag": f"{HEALTH}/shift_mean_step",
                "early_median": early,
                "late_median": late,
                "largest_layer": largest[1],
                "largest_late_median": largest[0],
                "probes": len(points),
            },
            ADVICE["shift_not_settling"],
        )
    ]


def _healthy(run: _Run) -> Finding:
    """The numbers that show a run is healthy."""
    last = run.steps[-1]
    ratio = depth_log10([v for _, v in _profile(run.stat(BACKPROP, "norm").rows(_stack(run)), -1)])
    updates = [v for _, v in run.health.get("update_ratio_total", []) if math.isfinite(v)]
    grads = [v for _, v in run.health.get("grad_norm_total", []) if math.isfinite(v)]
    parts = []
    evidence: dict[str, Any] = {}
    if ratio is not None:
        parts.append(f"backprop depth ratio {ratio:+.2f} decades over the hidden stack")
        evidence["depth_log10"] = ratio
    if updates:
        median = statistics.median(updates)
        parts.append(f"median update/weight {median:.2g}")
        evidence["update_ratio_median"] = median
    if len(grads) >= 2 and statistics.median(grads) > 0:
        jump = max(grads) / statistics.median(grads)
        parts.append(f"largest total gradient norm {jump:.1f}x its median")
        evidence["grad_norm_max_over_median"] = jump
    return Finding(
        "healthy",
        "info",
        "",
        run.steps[0],
        last,
        ratio if ratio is not None else math.nan,
        "no finding: " + ("; ".join(parts) if parts else f"{len(run.steps)} logging steps"),
        evidence,
        ADVICE["healthy"],
    )


def columns(series: Mapping[str, Series] | History) -> Columns:
    """``(steps, {tag: (positions, values)})`` of the tags the rules read: every logged step
    once, sorted, and each tag's points as positions into it (points in step order); a
    :class:`History` gives them without building a tuple per point."""
    if isinstance(series, History):
        return series.columns()
    points = {
        name: np.asarray(list(p), dtype=float).reshape(-1, 2)
        for name, p in series.items()
        if relevant(name)
    }
    steps = np.unique(np.concatenate([p[:, 0] for p in points.values()] or [np.empty(0)]))
    steps = steps.astype(np.int64)
    return steps, {
        name: (np.searchsorted(steps, p[:, 0].astype(np.int64)), p[:, 1])
        for name, p in points.items()
    }


def diagnose(
    series: Mapping[str, Series] | History,
    info: RunInfo | None = None,
    thresholds: Thresholds | None = None,
) -> list[Finding]:
    """Diagnose one run.

    Args:
        series: ``{tag: [(step, value), ...]}`` as logged (other tags are ignored), or the
            :class:`History` that keeps them.
        info: the layers in forward order and the batch size; default: rebuilt from the tags
            (:meth:`RunInfo.from_tags`).
        thresholds: the rules' bounds; default :class:`Thresholds`.

    Returns:
        The findings, most severe and earliest first; one ``healthy`` finding when no warning or
        error fired; empty when ``series`` holds no statistic the rules read.
    """
    t = thresholds or Thresholds()
    if info is None:
        info = RunInfo.from_tags(series.tags() if isinstance(series, History) else series)
    run = _Run(columns(series), info)
    if not run.steps:
        return []
    depth, depth_columns = _depth(run, t)
    findings = [
        *_nonfinite(run),
        *depth,
        *_growth(run, t, depth_columns),
        *_activations(run, t),
        *_updates(run, t),
        *_spikes(run, t),
        *_batchnorm(run, t),
        *_shift(run, t),
    ]
    if not any(f.severity != "info" for f in findings):
        findings.append(_healthy(run))
    return rank(findings, KINDS)
