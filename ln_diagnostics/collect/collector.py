"""The framework-agnostic collector: owns the hooks, keeps step state on the device, and turns a
logging step into a :class:`StepReport` with one packed device-to-host copy.

A step's life: ``begin_step`` decides whether the step logs and registers the forward hooks for a
logging step only; the hooks (and tensor hooks on the outputs, for the backward pass) append small
device tensors; ``before_optimizer_step`` reads gradient and parameter norms and keeps a copy of
the parameters (on every other step it only adds the step's total gradient norm to a
device-side window, so that a spike between two logging steps reaches the next one);
``end_step`` measures the update, packs everything into one float64 vector, copies it to the
host once and reduces it there (:mod:`~ln_diagnostics.collect.reduce`), and removes the forward
hooks again. Other steps run without our hooks: a module with a hook takes PyTorch's slower call
path. Where ``torch.compile`` is in play the hooks stay registered from ``attach`` to ``detach``
(a compiled graph keeps calling the hooks it was traced with and ignores hooks registered later)
and return at their first line on other steps.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> collector = Collector(model, select_modules(model))
    >>> collector.attach()
    >>> collector.begin_step(0, scalars=True, histograms=False)
    >>> model(torch.randn(16, 4)).sum().backward()
    >>> collector.before_optimizer_step()
    >>> report = collector.end_step()
    >>> collector.detach()
    >>> sorted(t for t in report.scalars if t.endswith("/1"))[:3]
    ['activations/absmax/1', 'activations/kurtosis/1', 'activations/mean/1']
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ln_diagnostics.collect.grouping import Grouping
from ln_diagnostics.collect.packing import (
    Layout,
    Status,
    counted_part,
    gather,
    pack,
    pack_activations,
    pack_backprop,
    pack_histograms,
    pack_norms,
    rank,
)
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.collect.reduce import Layers, Reduction
from ln_diagnostics.collect.selection import (
    module_parameters,
    primary_tensor,
    saturation_kind,
    select_modules,
)
from ln_diagnostics.stats.histogram import bucket_edges, histogram
from ln_diagnostics.stats.moments import CHUNK, Scratch, dense_values, power_sums
from ln_diagnostics.tags import layer_name

__all__ = ["Collector", "select_modules"]


def _norms(tensors: list[Tensor]) -> list[Tensor]:
    """L2 norms, float64 (float32 on MPS), with one fused call per (device, dtype) group and no
    host sync.

    On the CPU each tensor is reduced in float32, one :data:`CHUNK` at a time, and the squares of
    the pieces' norms are added in float64: a float32 norm of 128 Ki elements is good to ~1e-7
    relative (of a 2.4 M-element tensor in one piece, 4e-5), while float64 norms convert each
    tensor to float64 first, several times slower on the benchmark MLP's parameters
    (``benchmarks/overhead.py --kernels``). CUDA's fused kernel accumulates float32 inputs in
    float64 without a copy. MPS has no float64, so there the norms stay float32.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(index)
    out: list[Tensor] = [torch.empty(0)] * len(tensors)
    for (device, dtype), indices in groups.items():
        if device.type != "cpu":
            wide = torch.float32 if device.type == "mps" else torch.float64
            norms = torch._foreach_norm([tensors[i] for i in indices], 2.0, dtype=wide)
        else:
            parts: list[Tensor] = []
            owners: list[int] = []
            for k, i in enumerate(indices):
                t = tensors[i]
                pieces = t.reshape(-1).split(CHUNK) if t.numel() > CHUNK else (t,)
                parts.extend(pieces)
                owners.extend([k] * len(pieces))
            narrow = None if dtype in (torch.float32, torch.float64) else torch.float32
            pieces_norms = torch.stack(torch._foreach_norm(parts, 2.0, dtype=narrow)).double()
            if len(parts) > len(indices):  # a tensor in several pieces: add their squares
                totals = torch.zeros(len(indices), dtype=torch.float64)
                owner = torch.tensor(owners)
                pieces_norms = totals.index_add_(0, owner, pieces_norms.square_()).sqrt_()
            norms = pieces_norms.unbind()
        for i, norm in zip(indices, norms, strict=True):
            out[i] = norm
    return out


#: Optimizers whose parameter indices are kept (more are rare: the cache starts over).
_KEPT_OPTIMIZERS = 8


def _sum_of_squares(tensors: list[Tensor], device: torch.device) -> Tensor:
    """``Σ‖t‖²`` over ``tensors``, a float64 0-d tensor on ``device``, without a host sync.

    The norms are accumulated in float32 (float64 for float64 tensors; one fused kernel per
    (device, dtype) group, no converted copy) and squared and added in float64: a pass over the
    gradients at about half the cost of float64 accumulation on the CPU, with a relative error
    of ~1e-6. A float32 sum of squares overflows above a norm of ~1.8e19, which then reads as
    infinite.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.device, t.dtype)].append(t)
    totals = []
    for (_, dtype), group in groups.items():
        accumulate = torch.float64 if dtype == torch.float64 else torch.float32
        norms = torch.stack(torch._foreach_norm(group, 2.0, dtype=accumulate))
        norms = norms.to(device=device, dtype=torch.float64)
        totals.append(torch.dot(norms, norms))
    return totals[0] if len(totals) == 1 else torch.stack(totals).sum()


def _compile_count() -> int:
    """Graphs Dynamo has compiled in this process (0 when ``torch.compile`` was never used)."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    return 0 if dynamo is None else dynamo.counters["stats"]["unique_graphs"]


def _has_compiled_parts(model: nn.Module) -> bool:
    """True when ``model`` or one of its submodules was compiled by ``torch.compile``."""
    if getattr(model, "_compiler_ctx", None):  # Lightning's unwrapped compiled module
        return True
    return any(
        hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None
        for m in model.modules()
    )


def _dense(t: Tensor) -> Tensor:
    return t.coalesce().values() if t.is_sparse else t


class Collector:
    """Collects per-module statistics of one model on the steps it is told to log.

    Args:
        model: the model whose parameters count toward the model-wide norms.
        modules: ``(qualified name, module)`` pairs to watch, e.g. from ``select_modules``.
        owners: ``(qualified name, parameters)`` of parameters no watched module holds, e.g.
            from ``parameter_owners`` (a ViT's ``cls_token``): their parameter, gradient and
            update norms and ratios are logged under the owner's name (``<root>`` for the
            model); they have no activations and no histograms.
        track_updates: copy the watched parameters before the update on logging steps to
            measure ``‖θ_{t+1} − θ_t‖`` (one parameter-sized copy that lives for the logging
            step only).
        tag_prefix: prepended to every tag (e.g. ``"val/"``).
    """

    def __init__(
        self,
        model: nn.Module,
        modules: list[tuple[str, nn.Module]],
        *,
        owners: Sequence[tuple[str, Sequence[nn.Parameter]]] = (),
        track_updates: bool = True,
        tag_prefix: str = "",
    ) -> None:
        self.model = model
        self.names = [layer_name(name) for name, _ in modules]
        self.modules = [module for _, module in modules]
        #: every logged layer name: the watched modules', then the parameter owners'
        self.layer_names = self.names + [layer_name(name) for name, _ in owners]
        self.track_updates = track_updates
        self.tag_prefix = tag_prefix
        self._saturation = [saturation_kind(m) for m in self.modules] + [None] * len(owners)
        # owners' parameters by (module, attribute name): FSDP2 replaces the objects, not names
        slots = {
            id(p): (module, name)
            for module in model.modules()
            for name, p in module.named_parameters(recurse=False)
        }
        self._owner_slots = [
            [slots[id(p)] for p in params if id(p) in slots] for _, params in owners
        ]
        self._param_ids: list[int] = []
        # the indices of each optimizer's parameters, see _indices_of
        self._optimizer_indices: dict[tuple[int, tuple[tuple[int, ...], ...]], list[int]] = {}
        self._binding = 0  # bumped each time the parameters are bound anew
        self._group_mapping: dict[str, str] | None = None
        self._bind_parameters()
        self._hooks = [partial(self._forward_hook, i) for i in range(len(self.modules))]
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._persistent = False
        self._compiles = 0
        self._disabled: set[int] = set()
        self._edges: Tensor | None = None
        self._limits: list[float] = []
        self._warned_failures: set[str] = set()
        #: work buffers of the activation statistics, shared with probes that pause the collector
        self.scratch = Scratch()
        self._reduction = Reduction(tag_prefix=tag_prefix)
        # Σ‖g‖² of each step since the last logging step (device), and how many gradient
        # tensors each step read (host; -1 where reading failed): the window sentinels
        self._window = torch.zeros(0, dtype=torch.float64)
        self._window_reads: list[int] = []
        self.step = 0
        self._on = False
        self._hist_on = False
        self._reset_step_state()

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> None:
        """Start watching: one forward hook per watched module on logging steps (idempotent)."""
        if self._armed:
            return
        self._armed = True
        self._compiles = _compile_count()
        self._persistent = _has_compiled_parts(self.model)
        if self._persistent:
            self._register()

    def _register(self) -> None:
        if not self._handles:  # the same hook objects every time: compiled graphs keep theirs
            self._handles = [
                module.register_forward_hook(hook)
                for module, hook in zip(self.modules, self._hooks, strict=True)
            ]

    def _unregister(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def detach(self) -> None:
        """Remove every hook and drop the step state; safe to call more than once."""
        self._armed = self._persistent = False
        self._unregister()
        self.scratch.clear()
        self._on = self._hist_on = False
        self._reset_step_state()
        self._window_reads = []

    _grouping: Grouping | None = None

    @property
    def group_names(self) -> list[str] | None:
        """Each watched layer's block name when statistics are grouped, else ``None``."""
        return None if self._grouping is None else self._grouping.group_names

    def set_groups(self, mapping: dict[str, str] | None) -> None:
        """Report statistics per block: ``mapping`` sends layer names to block names.

        Layers missing from the mapping stay on their own; ``None`` reports per layer again.
        See :mod:`ln_diagnostics.collect.grouping` for how each statistic is merged.
        """
        self._grouping = None
        self._group_mapping = mapping
        if mapping is not None:
            self._grouping = Grouping(self._layers(), mapping)

    def _layers(self) -> Layers:
        """The logged layers as the host reduction sees them."""
        return Layers(self.layer_names, self._saturation, self._module_params)

    def _bind_parameters(self) -> None:
        """Read the trainable parameters again if the model's changed since the last time.

        FSDP2's ``fully_shard`` replaces a module's parameters by sharded ``DTensor`` ones, also
        after this collector was built (Lightning's ``ModelParallelStrategy`` shards in
        ``configure_model``, after the callbacks' ``setup``), and the gradients live on the new
        parameters. Called on logging steps: one pass over ``model.parameters()``.
        """
        params = module_parameters(self.model)
        ids = [id(p) for p in params]
        if ids == self._param_ids:
            return
        self._params, self._param_ids = params, ids
        self._binding += 1
        dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor exists
        self._sharded = dtensor is not None and any(isinstance(p, dtensor.DTensor) for p in params)
        position = {pid: j for j, pid in enumerate(ids)}
        owned = [module_parameters(m) for m in self.modules] + [
            [getattr(module, name) for module, name in slots] for slots in self._owner_slots
        ]
        self._module_params = [
            [position[id(p)] for p in params if id(p) in position] for params in owned
        ]
        self._watched_params = sorted({j for js in self._module_params for j in js})
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._edges = None  # histogram edges live on that device
        if self._group_mapping is not None:
            self.set_groups(self._group_mapping)

    def _reset_step_state(self) -> None:
        self._shift: dict[int, Tensor] = {}
        self._act: list[tuple[int, int, Tensor]] = []
        self._act_hist: list[tuple[int, Tensor, Tensor]] = []
        self._backprop: list[tuple[int, Tensor]] = []
        # indices and norms of the gradients, then of the parameters, this rank counts
        self._grads: tuple[list[int], list[Tensor], list[int], list[Tensor]] | None = None
        self._read: set[int] = set()
        self._grad_hist: list[tuple[int, Tensor, Tensor]] = []
        self._snapshot: tuple[list[int], list[Tensor]] | None = None
        self._status = Status.OK

    # ------------------------------------------------------------------ step protocol
    def begin_step(self, step: int, *, scalars: bool, histograms: bool) -> None:
        """Start step ``step``; collect only if it logs scalars or histograms."""
        self._reset_step_state()
        self.step = step
        self._on = scalars or histograms
        self._hist_on = histograms
        if self._armed and not self._persistent and _compile_count() != self._compiles:
            self._persistent = True  # compiled since attach, perhaps by a wrapper outside
        if self._on:
            self._bind_parameters()
        self._open_window_slot()
        if self._armed and (self._on or self._persistent):
            self._register()
        elif not self._persistent:
            self._unregister()
        if histograms and self._edges is None:
            edges = bucket_edges(torch.device("cpu"))
            self._limits = [*edges.tolist(), float(torch.finfo(torch.float64).max)]
            self._edges = edges.to(self._device)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore forward passes inside the block (validation, probes)."""
        on, self._on = self._on, False
        try:
            yield
        finally:
            self._on = on

    def before_optimizer_step(self, optimizer: Any | None = None) -> None:
        """Read gradients (after unscaling and accumulation, before clipping).

        With ``optimizer``, read the gradients of its parameters, so that with several
        optimizers stepping in one batch each parameter's gradient is the one its own optimizer
        steps with; without, read every gradient. A parameter is read once per step. Each rank
        reads the part of every tensor it counts (an FSDP2 shard: see
        :func:`~ln_diagnostics.collect.packing.counted_part`).

        On a logging step this reads gradient and parameter norms (the latter and the update
        snapshot at the first call, before any update). On every step, logging or not, the
        step's sum of squared gradient norms is added to a device-side window (one fused norm
        kernel per device and dtype, no host sync), which the next logging step packs with the
        rest: ``health/grad_norm_total_max`` and ``health/nonfinite_grad_steps`` cover every
        step since the previous logging step. A failure warns once; what it concerns is then not
        logged for such steps, and training goes on.
        """
        try:
            if self._on:
                self._read_gradients(optimizer)
            elif self._window_reads:
                self._watch_gradients(optimizer)
        except Exception as exc:
            if self._window_reads:
                self._window_reads[-1] = -1  # the window misses this step
            if self._on:
                self._status = max(self._status, Status.GRADIENTS_LOST)
                self._fail("reading gradients and parameters", exc)
            else:
                self._fail("measuring the total gradient norm between logging steps", exc)

    def _open_window_slot(self) -> None:
        """A zero slot of the window for this step, on the parameters' device."""
        used = len(self._window_reads)
        if used >= self._window.numel() or self._window.device != self._device:
            grown = torch.zeros(max(16, 2 * used), dtype=torch.float64, device=self._device)
            grown[:used] = self._window[:used].to(self._device)
            self._window = grown
        self._window_reads.append(0)

    def _add_to_window(self, squares: Tensor, tensors: int) -> None:
        """Add ``squares`` (``Σ‖g‖²`` of ``tensors`` gradient tensors) to this step's slot."""
        if self._window_reads[-1] >= 0:
            self._window[len(self._window_reads) - 1] += squares
            self._window_reads[-1] += tensors

    def _fresh(self, optimizer: Any | None) -> list[int]:
        """Indices of the parameters with a gradient not read yet this step (``optimizer``'s)."""
        params, read = self._params, self._read
        fresh = [
            j for j in self._indices_of(optimizer) if params[j].grad is not None and j not in read
        ]
        read.update(fresh)
        return fresh

    def _indices_of(self, optimizer: Any | None) -> Sequence[int]:
        """Indices of ``optimizer``'s parameters among the bound ones (all without one), kept
        for the same bound parameters and the same parameters in the optimizer's groups: a step
        that does not log finds them without building a set of them. (Parameter ids identify
        them here: the collector holds the bound ones, so no id of theirs is reused.)"""
        if optimizer is None:
            return range(len(self._params))
        groups = tuple(tuple(map(id, group["params"])) for group in optimizer.param_groups)
        key = (self._binding, groups)
        indices = self._optimizer_indices.get(key)
        if indices is None:
            owned = set(itertools.chain.from_iterable(groups))
            indices = [j for j, pid in enumerate(self._param_ids) if pid in owned]
            if len(self._optimizer_indices) >= _KEPT_OPTIMIZERS:
                self._optimizer_indices.clear()
            self._optimizer_indices[key] = indices
        return indices

    def _watch_gradients(self, optimizer: Any | None) -> None:
        """A step that does not log: the window's share of the gradients only."""
        grads = list(self._counted(self._fresh(optimizer), lambda p: _dense(p.grad)).values())
        if grads:
            self._add_to_window(_sum_of_squares(grads, self._device), len(grads))

    def _read_gradients(self, optimizer: Any | None) -> None:
        fresh = self._fresh(optimizer)
        if self._grads is not None and not fresh:
            return
        grad_of = self._counted(fresh, lambda p: _dense(p.grad))
        present, grads = list(grad_of), list(grad_of.values())
        if self._grads is None:
            params = self._counted(range(len(self._params)), Tensor.detach)
            norms = _norms(grads + list(params.values()))  # one fused kernel
            grad_norms = norms[: len(grads)]
            self._grads = (present, grad_norms, list(params), norms[len(grads) :])
            if self.track_updates:
                self._snapshot = self._copy_watched_params()
        else:
            read, earlier, *params = self._grads
            grad_norms = _norms(grads)
            self._grads = (read + present, earlier + grad_norms, *params)
        if grad_norms:  # the window's share: the same float64 norms
            squares = torch.stack([n.to(self._device) for n in grad_norms]).double().square()
            self._add_to_window(squares.sum(), len(grads))
        if self._hist_on and self._edges is not None:
            # one row per parameter, merged per module when packed: no concatenated copy
            # (watched modules only: parameter owners log norms, not histograms)
            for i, js in enumerate(self._module_params[: len(self.modules)]):
                for j in js:
                    if j in grad_of:
                        self._grad_hist.append(
                            (i, *histogram(grad_of[j], self._edges, scratch=self.scratch))
                        )

    def _counted(
        self, indices: Iterable[int], read: Callable[[Tensor], Tensor]
    ) -> dict[int, Tensor]:
        """``read(parameter)`` at ``indices``: the part this rank counts, where it counts one."""
        if not self._sharded:  # plain tensors only: rank 0 counts them all (see counted_part)
            return {j: read(self._params[j]) for j in indices} if rank() == 0 else {}
        parts = {j: counted_part(read(self._params[j])) for j in indices}
        return {j: t for j, t in parts.items() if t is not None}

    def _watched_values(self, indices: list[int]) -> list[Tensor]:
        counted = self._counted(indices, Tensor.detach)
        return [counted[j] for j in indices]

    def _copy_watched_params(self) -> tuple[list[int], list[Tensor]]:
        """This rank's part of the watched parameters before the update, for this logging step
        only.

        Keeping the copy between logging steps would save the CPU a page fault per 4 KiB of
        parameters on each logging step, at the price of a parameter-sized block of resident
        memory for the whole run (5 MiB more peak RSS on the benchmark MLP).
        """
        counted = self._counted(self._watched_params, Tensor.detach)
        return list(counted), [t.clone() for t in counted.values()]

    def end_step(self) -> StepReport | None:
        """Finish the step; on a logging step return its report (one device-to-host copy)."""
        if not self._persistent:
            self._unregister()
        if not self._on:
            self._reset_step_state()
            return None
        vector, layout = self._pack_or_empty()
        try:
            report = self._unpack(self._to_host(vector), layout)
        except Exception as exc:
            self._fail("merging the ranks' statistics", exc)
            report = None
        self._on = self._hist_on = False
        self._reset_step_state()
        self._window[: len(self._window_reads)].zero_()  # a new window opens
        self._window_reads = []
        return report

    # ------------------------------------------------------------------ hooks
    def _forward_hook(self, i: int, module: nn.Module, args: Any, output: Any) -> None:
        if not self._on or i in self._disabled:
            return
        try:
            self._record_forward(i, output)
        except Exception as exc:
            self._disable(i, exc)

    # Kept out of torch.compile graphs: tracing them would guard on the layer index and on the
    # step lists, and a deep compiled model would pass Dynamo's recompile limit.
    @torch.compiler.disable
    def _record_forward(self, i: int, output: Any) -> None:
        t = primary_tensor(output)
        if t is None or t.numel() == 0:
            return
        values = dense_values(t.detach())  # a nested tensor's values, without padding
        shift = self._shift.get(i)
        row = power_sums(values, shift, self._saturation[i], scratch=self.scratch)
        if shift is None:
            self._shift[i] = row[0]
        self._act.append((i, values.numel(), row))
        if self._hist_on and self._edges is not None:
            self._act_hist.append((i, *histogram(values, self._edges, scratch=self.scratch)))
        if t.requires_grad and torch.is_grad_enabled():
            t.register_hook(partial(self._backward_hook, i))

    @torch.compiler.disable
    def _backward_hook(self, i: int, grad: Tensor) -> None:
        if not self._on or i in self._disabled:
            return
        try:
            with torch.no_grad():
                norm = torch.linalg.vector_norm(dense_values(grad.detach()), dtype=torch.float32)
            self._backprop.append((i, norm))
        except Exception as exc:
            self._disable(i, exc)

    def _fail(self, what: str, exc: Exception) -> None:
        """Warn once per kind of failure outside the hooks; the caller carries on without it."""
        self._warn_once(
            what,
            f"ln-diagnostics: {what} failed at step {self.step} ({type(exc).__name__}: {exc}); "
            "the statistics that need it are not logged for such steps, training goes on.",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_failures:
            self._warned_failures.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _disable(self, i: int, exc: Exception) -> None:
        self._disabled.add(i)
        warnings.warn(
            f"ln-diagnostics: collecting statistics for layer '{self.names[i]}' failed "
            f"({type(exc).__name__}: {exc}); that layer is no longer watched, training goes on.",
            RuntimeWarning,
            stacklevel=2,
        )

    # ------------------------------------------------------------------ packing
    def _pack_or_empty(self) -> tuple[Tensor, Layout]:
        """The packed step, or, if packing fails, a vector of the same layout that says so: the
        other ranks are waiting in the collective for one of this length."""
        try:
            return self._pack()
        except Exception as exc:
            self._fail("packing the step's statistics", exc)
            self._reset_step_state()
            self._status = Status.STEP_LOST
            return self._pack()

    def _pack(self) -> tuple[Tensor, Layout]:
        """The step's device tensors in fixed per-module slots (see ``packing``)."""
        device = self._device
        m, p = len(self.modules), len(self._params)
        buckets = self._edges.numel() + 1 if self._hist_on and self._edges is not None else 0
        window = len(self._window_reads)
        layout = Layout(m, p, buckets, window)
        absent = torch.full((p,), -1.0, dtype=torch.float64, device=device)
        grad_n = param_n = update_n = absent
        if self._grads is not None:
            present, grad_norms, counted, param_norms = self._grads
            grad_n = pack_norms(p, present, grad_norms, device)
            param_n = pack_norms(p, counted, param_norms, device)
            if self._snapshot is not None and self._snapshot[0]:
                watched, before = self._snapshot
                torch._foreach_sub_(before, self._watched_values(watched))  # θ_t − θ_{t+1}
                update_n = pack_norms(p, watched, _norms(before), device)
        parts = {
            "status": torch.full((1, 1), float(self._status), dtype=torch.float64, device=device),
            "act": pack_activations(m, self._act, device),
            "bp": pack_backprop(m, self._backprop, device),
            "norms": torch.stack([grad_n, param_n, update_n], dim=1),
        }
        reads = torch.tensor(self._window_reads, dtype=torch.float64, device=device)
        parts["window"] = torch.stack([self._window[:window].to(device), reads], dim=1)
        if buckets:
            parts["act_hist"] = pack_histograms(m, self._act_hist, buckets, device)
            parts["grad_hist"] = pack_histograms(m, self._grad_hist, buckets, device)
        return pack(layout, parts), layout

    @staticmethod
    def _to_host(vector: Tensor) -> list[list[float]]:
        """Every rank's vector on the host: one collective, then the step's one copy."""
        return gather(vector).cpu().tolist()

    def _unpack(self, ranks: list[list[float]], layout: Layout) -> StepReport | None:
        """The step's report from every rank's host vector (see :mod:`.reduce`)."""
        return self._reduction.report(
            ranks,
            layout,
            step=self.step,
            layers=self._layers(),
            forward=list(self._shift),
            grouping=self._grouping,
            limits=self._limits,
        )
