"""Side-effect-free extra forward passes: RNG and buffer snapshots, batch helpers.

The covariate-shift and ICS probes run forward passes that training never asked for. To leave
the training trajectory bit-for-bit unchanged they restore, afterwards, the random number
generators (CPU and every initialised CUDA device) and every buffer of the model (BatchNorm
running statistics and ``num_batches_tracked``, spectral-norm vectors, ...). A probe that runs
a ``training_step`` also restores the attributes it may set (:func:`preserved_attributes`).

Example:
    >>> import torch
    >>> state = RNGState.capture()
    >>> a = torch.rand(2)
    >>> state.restore()
    >>> torch.equal(a, torch.rand(2))
    True
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: ``forward(model, batch)`` runs a model on a batch; its return value is ignored by the probes.
ForwardFn = Callable[[nn.Module, Any], Any]


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@dataclass
class RNGState:
    """The state of the CPU generator and of every initialised CUDA device's generator."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> RNGState:
        """Snapshot the generators now."""
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state_all() if _cuda_ready() else None)

    def restore(self) -> None:
        """Put the generators back exactly as captured."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def seed_generators(seed: int) -> None:
    """Seed the CPU generator and initialised CUDA generators (no lazy CUDA seeding is queued,
    so a later CUDA initialisation keeps the seed the user chose)."""
    torch.default_generator.manual_seed(seed)
    if _cuda_ready():
        torch.cuda.manual_seed_all(seed)


@contextmanager
def preserved_state(model: nn.Module, *, seed: int | None = None) -> Iterator[None]:
    """Run the block, then restore the RNG state and all of ``model``'s buffers exactly.

    ``seed`` seeds the generators inside the block (a probe then draws the same dropout masks
    every time it runs); the run's own RNG state is restored on exit either way.
    """
    rng = RNGState.capture()
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if seed is not None:
            seed_generators(seed)
        yield
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        rng.restore()


class AttributeStateError(RuntimeError):
    """:func:`preserved_attributes` could not save or put back one attribute (the message names
    it): a failure of the probe's bookkeeping, not of the user's code it ran."""


def _snapshot(value: Any) -> Any:
    """What :func:`_restore` needs to undo in-place changes of ``value``: a tensor's clone and
    version counter (``None`` for an inference tensor, which has none), a container's shallow
    copy; nothing for other objects."""
    if isinstance(value, Tensor):
        if value.is_inference():
            with torch.inference_mode():
                return value.clone(), None
        return value.detach().clone(), value._version
    if isinstance(value, (list, dict, set)):
        return copy.copy(value)
    return None


def _restore(value: Any, saved: Any) -> Any:
    """``value`` with the contents :func:`_snapshot` saved put back in place, so that other
    references to it see them too; a tensor is written only if it was changed in place (its
    version counter moved; an inference tensor, without a counter, is always written back) and
    replaced by its copy if its shape or dtype changed."""
    if isinstance(value, Tensor):
        clone, version = saved
        if version is not None and value._version == version:
            return value
        if value.shape != clone.shape or value.dtype != clone.dtype:
            return clone
        with torch.inference_mode() if version is None else torch.no_grad():
            value.copy_(clone)
    elif isinstance(value, list):
        value[:] = saved
    elif isinstance(value, (dict, set)):
        value.clear()
        value.update(saved)
    return value


def _guarded(what: str, owner: str, key: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise AttributeStateError(
            f"ln-diagnostics could not {what} attribute {owner}.{key} around the probe "
            f"({type(exc).__name__}: {exc})"
        ) from exc


@contextmanager
def preserved_attributes(model: nn.Module) -> Iterator[None]:
    """Run the block, then undo what it did to the attributes of ``model`` and its submodules.

    For a ``training_step`` run as a probe: an attribute it rebinds (an LSTM's carried
    ``self.hidden``) or adds is put back or removed; a list, dict or set it changes in place
    (``self.outputs.append(loss)``) gets its contents back, and so does a tensor attribute that
    is not a parameter or buffer (inference tensors, made under ``trainer.validate``, included).
    A metric object's state is restored too, since torchmetrics metrics are submodules whose
    states are such attributes; objects that are not modules are not looked into. A failure to
    save or restore an attribute raises :class:`AttributeStateError` naming it.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> model.outputs = []
        >>> with preserved_attributes(model):
        ...     model.outputs.append(1.0)
        ...     model.hidden = "set by the probe"
        >>> model.outputs, hasattr(model, "hidden")
        ([], False)
    """
    saved = [
        (
            name or type(model).__name__,
            vars(m),
            {
                k: (v, _guarded("save", name or type(model).__name__, k, _snapshot, v))
                for k, v in vars(m).items()
            },
        )
        for name, m in model.named_modules()
    ]
    try:
        yield
    finally:
        failures = []
        for owner, attributes, before in saved:
            for key in [k for k in attributes if k not in before]:
                del attributes[key]
            for key, (value, copied) in before.items():
                try:
                    attributes[key] = _guarded("restore", owner, key, _restore, value, copied)
                except AttributeStateError as exc:  # put the others back before raising
                    failures.append(exc)
        if failures:
            raise failures[0]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on ``batch``: ``model(batch)`` for a tensor, ``model(**batch)`` for a
    mapping, and for a tuple or list as many leading items as ``forward`` takes positional
    parameters: ``model(x)`` for an ``(x, y)`` batch and ``forward(self, x)``, ``model(x, y)``
    for ``forward(self, inputs, target)``.
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch[: _positional_arity(model, len(batch))])
    return model(batch)


def _positional_arity(model: nn.Module, available: int) -> int:
    """How many positional arguments ``model.forward`` accepts, capped at ``available``."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return available
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return available
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return min(available, max(1, sum(kind in positional for kind in kinds)))


def map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples, lists and dicts (others left as they are)."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = [(k, map_tensors(v, fn)) for k, v in batch.items()]
        try:
            return type(batch)(items)
        except TypeError:  # a mapping not built from pairs (defaultdict, MappingProxyType)
            return dict(items)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def detached_copy(batch: Any) -> Any:
    """A copy of ``batch`` whose tensors are detached clones (the training step may mutate its
    batch in place; the probe's batch must stay fixed)."""
    return map_tensors(batch, lambda t: t.detach().clone())


def is_plain(batch: Any) -> bool:
    """True when ``batch`` is made only of tensors, numbers, strings, ``None`` and plain
    tuples/lists/dicts — what ``torch.load(weights_only=True)`` can read back."""
    if batch is None or isinstance(batch, (Tensor, bool, int, float, str)):
        return True
    if type(batch) in (tuple, list):
        return all(is_plain(v) for v in batch)
    if type(batch) is dict:
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in batch.items())
    return False
