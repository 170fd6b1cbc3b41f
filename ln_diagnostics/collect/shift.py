"""Covariate shift of each watched layer's output, measured on a fixed probe batch.

Every probe runs the model once on the SAME batch with ``torch.no_grad()``, so the change of a
layer's output distribution between probes comes from parameter updates only. Each watched
module's output (its :func:`primary_tensor`) is fitted per feature with a Gaussian
(:func:`ln_diagnostics.stats.shift.feature_moments`; rank ≥ 4 → channels, dim 1; rank 2–3 → the
last dim, or dim 1 for channel-first 1-d layers such as ``Conv1d``) and compared with two
references: the previous probe (``*_step``) and the first probe of the run (``*_init``).

Mode and side effects: the probe runs the model in whatever mode training uses (normally train
mode), so BatchNorm normalises with the probe batch's own statistics exactly as training does and
the measured distributions are the ones the next layer sees while training; eval mode would
instead measure drift of the running statistics, which changes even when no parameter does.
Running statistics and every other buffer are restored afterwards; dropout draws from generators
seeded with a fixed seed inside the probe, so every probe applies the same masks; the run's RNG
state (CPU and CUDA) is restored exactly. The collector is paused during the probe.

Cost: one no-grad forward pass per probe and one device-to-host copy of the per-feature moments.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh())
    >>> probe = ShiftProbe(model, [("0", model[0])], batch=torch.randn(64, 4))
    >>> _ = probe.measure(0)
    >>> with torch.no_grad():
    ...     _ = model[0].weight.mul_(2.0)
    >>> round(probe.measure(1)["shift/logvar_step/0"], 3)  # log 4
    1.386
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ln_diagnostics.collect.probing import ForwardFn, default_forward, preserved_state
from ln_diagnostics.collect.selection import primary_tensor
from ln_diagnostics.stats.moments import Scratch
from ln_diagnostics.stats.shift import EPS, feature_moments, merge_moments, segment_shift_metrics
from ln_diagnostics.tags import SHIFT, health_tag, layer_name, tag

__all__ = ["SHIFT_STATS", "ShiftProbe"]

#: Logged statistics, in the order of :func:`ln_diagnostics.stats.shift.shift_metrics`.
SHIFT_STATS = ("mean", "logvar", "kl")

_CHANNELS_FIRST_1D: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)

Fit = tuple[Tensor, Tensor]  # (mean, var) per feature, float32 on the CPU


def _channels_first(module: nn.Module) -> bool:
    if isinstance(module, _CHANNELS_FIRST_1D):
        return True
    from ln_diagnostics.nn.norms import _ChannelNorm

    return isinstance(module, _ChannelNorm)


def _cpu_float(value: Any) -> Tensor:
    return torch.as_tensor(value).detach().float().cpu()


class ShiftProbe:
    """Per-layer covariate-shift metrics of ``model`` on one fixed batch.

    Args:
        model: the model whose buffers are restored after each probe.
        modules: ``(qualified name, module)`` pairs whose outputs are measured.
        batch: the probe batch, already on the model's device (can be set later via
            :attr:`batch`).
        forward: runs the model on the batch; default :func:`default_forward`.
        pause: a context-manager factory entered around the probe (``Collector.paused``).
        seed: seed of the generators inside the probe (fixed dropout masks).
        tag_prefix: prepended to every tag.
        eps: added to every variance (see :mod:`ln_diagnostics.stats.shift`).
        scratch: work buffers to reuse (the collector's: the probe runs while it is paused).

    If the forward pass fails, the probe warns once (naming the exception and the
    ``probe_forward`` option) and disables itself; :meth:`measure` then returns ``{}``. A layer
    whose output cannot be fitted warns once, naming it, and is left out from then on. A nested
    tensor output is fitted on its values (padding excluded), its features being the last
    dimension of its components.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: list[tuple[str, nn.Module]],
        *,
        batch: Any = None,
        forward: ForwardFn | None = None,
        pause: Callable[[], AbstractContextManager[Any]] | None = None,
        seed: int = 0,
        tag_prefix: str = "",
        eps: float = EPS,
        scratch: Scratch | None = None,
    ) -> None:
        self.model = model
        self.names = [layer_name(name) for name, _ in modules]
        self.modules = [module for _, module in modules]
        self.batch = batch
        self.forward = forward or default_forward
        self._pause = pause or nullcontext
        self.seed = seed
        self.tag_prefix = tag_prefix
        self.eps = eps
        self._scratch = scratch or Scratch()
        self._channels_first = [_channels_first(m) for m in self.modules]
        self.init: dict[str, Fit] = {}
        self.prev: dict[str, Fit] = {}
        self.disabled = False
        self._failed: set[int] = set()

    @classmethod
    def from_collector(cls, collector: Any, **kwargs: Any) -> ShiftProbe:
        """A probe over the collector's watched modules that pauses it while probing."""
        modules = list(zip(collector.names, collector.modules, strict=True))
        return cls(
            collector.model, modules, pause=collector.paused, scratch=collector.scratch, **kwargs
        )

    # ------------------------------------------------------------------ measuring
    def measure(self, step: int) -> dict[str, float]:
        """Run the probe; return this step's ``shift/…`` and ``health/shift_…`` scalars."""
        if self.disabled or self.batch is None:
            return {}
        fits = self._fit()
        if fits is None:
            return {}
        return self._compare(fits)

    def _fit(self) -> dict[int, Fit] | None:
        captured: dict[int, tuple[int, Tensor, Tensor]] = {}
        handles = [
            module.register_forward_hook(partial(self._hook, i, captured))
            for i, module in enumerate(self.modules)
        ]
        try:
            with self._pause(), preserved_state(self.model, seed=self.seed), torch.no_grad():
                self.forward(self.model, self.batch)
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            for handle in handles:
                handle.remove()
        order = sorted(captured)
        if not order:
            return {}
        parts = [t for i in order for t in captured[i][1:]]
        device = parts[0].device
        host = torch.cat([p.to(device) for p in parts]).cpu()  # the probe's one host copy
        fits: dict[int, Fit] = {}
        offset = 0
        for i in order:
            size = captured[i][1].numel()
            fits[i] = (host[offset : offset + size], host[offset + size : offset + 2 * size])
            offset += 2 * size
        return fits

    def _hook(self, i: int, captured: dict, module: nn.Module, args: Any, output: Any) -> None:
        if i in self._failed:
            return
        try:
            self._capture(i, captured, output)
        except Exception as exc:  # the model ran; only this layer's statistics failed
            self._failed.add(i)
            captured.pop(i, None)
            warnings.warn(
                f"ln-diagnostics: the covariate-shift probe could not fit layer "
                f"'{self.names[i]}' ({type(exc).__name__}: {exc}); that layer has no shift "
                "metrics, the others go on.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _capture(self, i: int, captured: dict, output: Any) -> None:
        t = primary_tensor(output)
        if t is None or t.ndim == 0 or t.numel() == 0:
            return
        mean, var = feature_moments(
            t,
            channels_first=self._channels_first[i],
            scratch=self._scratch.vector(t.numel(), t.device),
        )
        fit = (t.numel() // mean.numel(), mean, var)
        earlier = captured.get(i)
        if earlier is None:
            captured[i] = fit
        elif earlier[1].shape == mean.shape:  # a module called more than once: pool the calls
            captured[i] = merge_moments(earlier, fit)

    def _compare(self, fits: dict[int, Fit]) -> dict[str, float]:
        pairs: list[tuple[str, str, Fit, Fit]] = []
        for i, fit in fits.items():
            name = self.names[i]
            for ref_name, refs in (("step", self.prev), ("init", self.init)):
                ref = refs.get(name, fit)
                if ref[0].shape == fit[0].shape:  # else the layer's width changed: no comparison
                    pairs.append((name, ref_name, fit, ref))
            self.prev[name] = fit
            if name not in self.init or self.init[name][0].shape != fit[0].shape:
                self.init[name] = fit
        if not pairs:
            return {}
        fits_now = [pair[2] for pair in pairs]
        refs = [pair[3] for pair in pairs]
        mu, var, mu_ref, var_ref = (
            torch.cat([fit[k] for fit in side]) for side in (fits_now, refs) for k in (0, 1)
        )
        sizes = [fit[0].numel() for fit in fits_now]
        values = segment_shift_metrics(mu, var, mu_ref, var_ref, sizes, eps=self.eps).tolist()
        scalars: dict[str, float] = {}
        totals: dict[str, list[float]] = {}
        for (name, ref_name, _, _), row in zip(pairs, values, strict=True):
            for stat, value in zip(SHIFT_STATS, row, strict=True):
                scalars[tag(SHIFT, f"{stat}_{ref_name}", name, prefix=self.tag_prefix)] = value
                totals.setdefault(f"{stat}_{ref_name}", []).append(value)
        for key, vals in totals.items():
            finite = [v for v in vals if math.isfinite(v)]
            mean = sum(finite) / len(finite) if len(finite) == len(vals) else math.nan
            scalars[health_tag(f"shift_{key}", prefix=self.tag_prefix)] = mean
        return scalars

    def _fail(self, exc: Exception) -> None:
        self.disabled = True
        warnings.warn(
            f"ln-diagnostics: the covariate-shift probe could not run the model on the probe "
            f"batch ({type(exc).__name__}: {exc}). Pass probe_forward=<callable(model, batch)> "
            "that runs your model on one batch (the default calls model(batch), model(**batch), "
            "or model(*batch[:k]) with k the positional parameters of forward); shift metrics "
            "are disabled, training goes on.",
            RuntimeWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The references: ``{"init": {layer: (mean, var)}, "prev": {...}}`` (CPU tensors)."""
        return {
            "init": {name: tuple(fit) for name, fit in self.init.items()},
            "prev": {name: tuple(fit) for name, fit in self.prev.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore references saved by :meth:`state_dict`; missing keys leave them empty."""
        for key in ("init", "prev"):
            refs = {
                str(name): (_cpu_float(fit[0]), _cpu_float(fit[1]))
                for name, fit in dict(state.get(key) or {}).items()
            }
            setattr(self, key, refs)
