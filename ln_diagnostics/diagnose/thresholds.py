"""The bounds every diagnosis rule uses, in one frozen, documented dataclass.

Example:
    >>> Thresholds().vanishing_decades
    2.0
    >>> Thresholds(dead_zero_frac=0.99).dead_zero_frac
    0.99
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Bounds of the diagnosis rules; every field can be set (``Thresholds(field=value)``).

    Attributes:
        vanishing_decades: ``vanishing_gradients`` when the backprop norm at the input end of the
            hidden stack is at least this many decades (powers of ten) below the output end
            (``log10(first / last) <= -vanishing_decades``).
        exploding_decades: ``exploding_gradients`` when it is at least this many decades above.
        growth_decades: ``gradient_growth`` when, across repeated blocks of sub-layers
            (``<prefix>.<i>.<sub-layer>``, e.g. ``encoder.layers.3.linear2``),
            the median over the blocks' sub-layers of ``log10(norm in the last block / norm in
            the first)`` is at least this (Post-LN transformers, Xiong et al. 2020).
        growth_min_blocks: repeated blocks needed before ``gradient_growth`` is judged.
        dead_zero_frac: ``dead_units`` when a ReLU-family output has ``zero_frac`` above this.
        saturated_frac: ``saturated_units`` when a tanh/sigmoid output has ``saturated_frac``
            (share of ``|y| > 0.97``, or of a sigmoid's outputs within 0.03 of 0 or 1) above this.
        collapsed_rel_std: ``collapsed_activations`` when ``std <= collapsed_rel_std * rms``
            (a constant output; an all-zero output counts too).
        update_ratio_low: ``update_ratio_small`` when ``updates/ratio`` stays below this.
        update_ratio_high: ``update_ratio_large`` when ``updates/ratio`` stays above this.
        update_ratio_persistence: share of a layer's logging steps that must be out of band.
        spike_factor: ``gradient_spike`` when ``health/grad_norm_total`` exceeds this many
            times the median of the run's earlier logging steps.
        spike_min_history: earlier logging steps needed before a spike can be judged.
        batchnorm_min_batch: ``batchnorm_small_batch`` when a run with BatchNorm trains with
            fewer samples than this per device.
        batchnorm_min_eval_batch: ``batchnorm_small_batch`` too when a run with BatchNorm is
            validated on fewer samples than this per device (batch size 1 with the default):
            its BatchNorm layers then rely on running statistics alone.
        shift_min_probes: covariate-shift probes needed before ``shift_not_settling`` is judged.
        shift_settle_ratio: ``shift_not_settling`` when the median shift versus the previous
            probe over the last third of the probes is at least this times the median over the
            first third.
    """

    vanishing_decades: float = 2.0
    exploding_decades: float = 2.0
    growth_decades: float = 0.3
    growth_min_blocks: int = 4
    dead_zero_frac: float = 0.9
    saturated_frac: float = 0.5
    collapsed_rel_std: float = 1e-4
    update_ratio_low: float = 1e-5
    update_ratio_high: float = 1e-1
    update_ratio_persistence: float = 0.5
    spike_factor: float = 10.0
    spike_min_history: int = 5
    batchnorm_min_batch: int = 8
    batchnorm_min_eval_batch: int = 2
    shift_min_probes: int = 6
    shift_settle_ratio: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"Thresholds.{f.name} must be an integer; got {value!r}")
            if f.type == "float" and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"Thresholds.{f.name} must be a finite non-negative number; got {value!r}"
                )
        if self.update_ratio_low > self.update_ratio_high:
            raise ValueError(
                "Thresholds.update_ratio_low must not exceed update_ratio_high; got "
                f"{self.update_ratio_low:g} > {self.update_ratio_high:g}"
            )
