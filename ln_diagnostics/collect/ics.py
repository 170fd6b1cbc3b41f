"""Internal covariate shift as gradient change (Santurkar et al. 2018), measured per layer.

For a measured layer ``i`` at step ``t``: ``G`` is the gradient of the layer's parameters that
backward produced this step (at ``θ_t``); ``G′`` is the gradient of the same loss on the same
batch with the same dropout masks after every layer BEFORE ``i`` in forward order took its real
optimizer update (``θ_{t+1}``), while ``i`` and the later layers stay at ``θ_t``. The probe logs
``ics/l2/<layer>`` = ‖G − G′‖ and ``ics/cos/<layer>`` = cos(G, G′), and
``health/ics_cos_mean`` (mean of the cosines over measured layers).

Protocol of an ICS step (plain PyTorch or Lightning):
``begin(batch)`` before the training forward (saves the RNG state; on the first call also
records the forward order with temporary pre-hooks that the training forward itself triggers);
``before_optimizer_step()`` after backward (saves ``θ_t`` and ``G``); ``end()`` after
``optimizer.step()`` (one extra forward/backward per measured layer with
``torch.autograd.grad``, then parameters, buffers and RNG state are put back exactly; ``.grad``
and the optimizer state are never touched).

Forward order: the order in which modules that own parameters are first CALLED during the
training forward of the first ICS step. "Layers before ``i``" are the parameter-owning modules
whose first call started before ``i``'s, excluding ``i``'s own subtree and its ancestors
(whose own parameters, e.g. a root-level scale, stay at ``θ_t``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> loss = lambda m, batch: m(batch).pow(2).mean()
    >>> probe = ICSProbe(model, [("0", model[0]), ("2", model[2])], loss=loss)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x = torch.randn(8, 3)
    >>> probe.begin(x)
    >>> loss(model, x).backward()
    >>> probe.before_optimizer_step()
    >>> opt.step()
    >>> out = probe.end()
    >>> out["ics/l2/0"], round(out["ics/cos/0"], 6)  # nothing comes before the first layer
    (0.0, 1.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ln_diagnostics.collect.probing import RNGState, preserved_state
from ln_diagnostics.collect.selection import module_parameters
from ln_diagnostics.tags import ICS, health_tag, layer_name, tag

__all__ = ["ICSProbe", "LossFn"]

#: ``loss(model, batch)`` returns the scalar loss whose gradient training uses.
LossFn = Callable[[nn.Module, Any], Tensor]


class ICSProbe:
    """Gradient-based internal covariate shift of a few layers, on the steps it is told to.

    Args:
        model: the trained model.
        candidates: ``(name, module)`` pairs that may be measured.
        loss: computes the training loss of ``model`` on a batch.
        max_layers: when ``select_all`` is false, measure at most this many candidates, evenly
            spaced in forward order (first and last included).
        select_all: measure every candidate that runs in the forward pass.
        pause: a context-manager factory entered around the extra passes (``Collector.paused``).
        tag_prefix: prepended to every tag.

    A failure of the extra forward/backward warns once (naming the exception and the
    ``ics_loss`` option) and disables the probe; the model is restored either way.
    """

    def __init__(
        self,
        model: nn.Module,
        candidates: list[tuple[str, nn.Module]],
        *,
        loss: LossFn,
        max_layers: int = 4,
        select_all: bool = False,
        pause: Callable[[], AbstractContextManager[Any]] | None = None,
        tag_prefix: str = "",
    ) -> None:
        self.model = model
        self.candidates = [(layer_name(name), module) for name, module in candidates]
        self.loss = loss
        self.max_layers = max_layers
        self.select_all = select_all
        self._pause = pause or nullcontext
        self.tag_prefix = tag_prefix
        self.disabled = False
        self.layers: list[tuple[str, nn.Module]] | None = None  # chosen after the order is known
        self._params = module_parameters(model)
        self._before: list[set[int]] = []
        self._order: dict[int, int] = {}
        self._order_handles: list[RemovableHandle] = []
        self._reset()

    def _reset(self) -> None:
        self._batch: Any = None
        self._step_loss: LossFn | None = None
        self._rng: RNGState | None = None
        self._theta: list[Tensor] | None = None
        self._grads: list[list[Tensor | None]] | None = None

    # ------------------------------------------------------------------ protocol
    @property
    def active(self) -> bool:
        """True between :meth:`begin` and :meth:`end`."""
        return self._rng is not None

    def begin(self, batch: Any, *, loss: LossFn | None = None) -> None:
        """Start an ICS step on ``batch``, before its training forward (``loss`` overrides the
        probe's loss for this step only)."""
        if self.disabled:
            return
        self._reset()
        self._batch, self._step_loss = batch, loss
        self._rng = RNGState.capture()
        if self.layers is None and not self._order_handles:
            self._record_order()

    def before_optimizer_step(self) -> None:
        """Save ``θ_t`` and the measured layers' gradients ``G`` (after backward)."""
        if not self.active or self._grads is not None:
            return
        self._finish_order()
        if not self.layers:
            return
        self._theta = [p.detach().clone() for p in self._params]
        self._grads = [
            [None if p.grad is None else p.grad.detach().clone() for p in module_parameters(module)]
            for _, module in self.layers
        ]

    def end(self) -> dict[str, float]:
        """After ``optimizer.step()``: measure, restore, return ``ics/…`` scalars."""
        try:
            if not self.active or self._theta is None or self._grads is None or not self.layers:
                return {}
            return self._measure()
        finally:
            self._finish_order()
            self._reset()

    def cancel(self) -> None:
        """Forget the current step and remove any temporary hooks."""
        for handle in self._order_handles:
            handle.remove()
        self._order_handles.clear()
        self._reset()

    # ------------------------------------------------------------------ forward order
    def _record_order(self) -> None:
        watched = {id(m): m for m in self.model.modules() if _own_params(m)}
        watched.update((id(m), m) for _, m in self.candidates)
        self._order = {}

        def pre_hook(key: int, module: nn.Module, args: Any) -> None:
            self._order.setdefault(key, len(self._order))

        for key, module in watched.items():
            self._order_handles.append(
                module.register_forward_pre_hook(lambda m, a, key=key: pre_hook(key, m, a))
            )

    def _finish_order(self) -> None:
        if not self._order_handles:
            return
        for handle in self._order_handles:
            handle.remove()
        self._order_handles.clear()
        ran = [(n, m) for n, m in self.candidates if id(m) in self._order and module_parameters(m)]
        ran.sort(key=lambda nm: self._order[id(nm[1])])
        if not self.select_all and len(ran) > self.max_layers:
            last = len(ran) - 1
            n = self.max_layers
            picks = sorted({round(k * last / (n - 1)) for k in range(n)})
            ran = [ran[k] for k in picks]
        self.layers = ran
        position = {id(p): j for j, p in enumerate(self._params)}
        owners = [m for m in self.model.modules() if id(m) in self._order and _own_params(m)]
        self._before = []
        for _, module in ran:
            start = self._order[id(module)]
            inside = {id(m) for m in module.modules()}
            own = {id(p) for p in module_parameters(module)}
            before: set[int] = set()
            for owner in owners:
                if self._order[id(owner)] >= start or id(owner) in inside:
                    continue
                if any(sub is module for sub in owner.modules()):
                    continue  # an ancestor of the layer: its own parameters stay at θ_t
                before.update(
                    position[id(p)]
                    for p in _own_params(owner)
                    if id(p) in position and id(p) not in own
                )
            self._before.append(before)
        if not ran:
            self._give_up("none of the layers chosen for ICS ran in the training forward pass")

    # ------------------------------------------------------------------ measuring
    def _measure(self) -> dict[str, float]:
        assert self._theta is not None and self._grads is not None and self.layers is not None
        assert self._rng is not None
        loss_fn = self._step_loss or self.loss
        theta_next = [p.detach().clone() for p in self._params]
        rows: list[tuple[str, Tensor]] = []
        try:
            with self._pause(), preserved_state(self.model):
                for (name, module), before, grads in zip(
                    self.layers, self._before, self._grads, strict=True
                ):
                    params = module_parameters(module)
                    if all(g is None for g in grads):
                        continue
                    with torch.no_grad():
                        for j, p in enumerate(self._params):
                            p.copy_(theta_next[j] if j in before else self._theta[j])
                    self._rng.restore()  # the training forward's dropout masks
                    with torch.enable_grad():
                        loss = _check_loss(loss_fn(self.model, self._batch))
                        shifted = torch.autograd.grad(loss, params, allow_unused=True)
                    rows.append((name, _compare(grads, shifted, params)))
        except Exception as exc:
            self._give_up(f"{type(exc).__name__}: {exc}", hint=True)
            return {}
        finally:
            with torch.no_grad():
                for p, value in zip(self._params, theta_next, strict=True):
                    p.copy_(value)
        if not rows:
            return {}
        values = torch.stack([r for _, r in rows]).cpu().tolist()  # one host copy
        scalars: dict[str, float] = {}
        for (name, _), (l2, cos) in zip(rows, values, strict=True):
            scalars[tag(ICS, "l2", name, prefix=self.tag_prefix)] = l2
            scalars[tag(ICS, "cos", name, prefix=self.tag_prefix)] = cos
        cosines = [row[1] for row in values]
        scalars[health_tag("ics_cos_mean", prefix=self.tag_prefix)] = (
            sum(cosines) / len(cosines) if all(math.isfinite(c) for c in cosines) else math.nan
        )
        return scalars

    def _give_up(self, why: str, *, hint: bool = False) -> None:
        self.disabled = True
        self.cancel()
        advice = (
            " Pass ics_loss=<callable(model, batch) -> scalar loss> (the default calls the "
            "LightningModule's training_step with logging muted)."
            if hint
            else ""
        )
        warnings.warn(
            f"ln-diagnostics: the ICS probe failed ({why}).{advice} ICS is disabled, "
            "training goes on.",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = getattr(loss, "shape", None)
        what = type(loss).__name__ + (f" of shape {tuple(shape)}" if shape else "")
        raise TypeError(f"the loss must be a scalar tensor; got {what}")
    return loss


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _compare(
    grads: list[Tensor | None], shifted: tuple[Tensor | None, ...], params: list[nn.Parameter]
) -> Tensor:
    """``[‖G − G′‖, cos(G, G′)]`` in float32 on the device (missing gradients count as zero)."""

    def flat(xs: Any) -> Tensor:
        return torch.cat(
            [
                (p.new_zeros(p.shape) if x is None else x.detach()).reshape(-1).float()
                for x, p in zip(xs, params, strict=True)
            ]
        )

    g, h = flat(grads), flat(shifted)
    l2 = torch.linalg.vector_norm(g - h)
    denom = torch.linalg.vector_norm(g) * torch.linalg.vector_norm(h)
    cos = torch.dot(g, h) / denom.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.stack([l2, cos])
