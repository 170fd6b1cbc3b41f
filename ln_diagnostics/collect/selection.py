"""Which modules of a model are watched, and how their outputs are read."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Iterator, Mapping, Sequence

from torch import Tensor, nn

from ln_diagnostics.stats.moments import Saturation

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn.modules.activation, name) for name in nn.modules.activation.__all__
)
_TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)
_SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)


def is_norm_module(module: nn.Module) -> bool:
    """True for torch's normalization layers and for modules named like one (``*Norm*``)."""
    return isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__


def resolve_types(types: Sequence[type | str]) -> tuple[type, ...]:
    """Turn classes or dotted class paths (``"torch.nn.Linear"``) into classes.

    Raises:
        ValueError: a path that does not import or does not name an ``nn.Module`` class.
    """
    resolved = []
    for entry in types:
        if isinstance(entry, str):
            module_name, _, attr = entry.rpartition(".")
            try:
                entry = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ValueError(
                    f"types: could not import {entry!r} (expected a dotted path to an nn.Module "
                    f"class such as 'torch.nn.Linear'): {exc}"
                ) from None
        if not (isinstance(entry, type) and issubclass(entry, nn.Module)):
            raise ValueError(
                f"types: expected nn.Module classes or their dotted paths; got {entry!r}"
            )
        resolved.append(entry)
    return tuple(resolved)


def _default_pick(module: nn.Module) -> bool:
    is_leaf = next(module.children(), None) is None
    has_own_params = next(module.parameters(recurse=False), None) is not None
    return (
        (is_leaf and has_own_params)
        or is_norm_module(module)
        or isinstance(module, _ACTIVATION_TYPES)
    )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def select_modules(
    model: nn.Module,
    *,
    types: tuple[type, ...] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[tuple[str, nn.Module]]:
    """Pick the watched modules, in registration order.

    By default: every leaf module with parameters of its own, plus every normalization and
    activation module. ``types`` replaces that rule with ``isinstance`` checks; ``include`` keeps
    only names matching one of its globs; ``exclude`` then drops names matching one of its globs.
    """
    picked = []
    for name, module in model.named_modules():
        name = plain_name(name)
        if types is not None:
            wanted = isinstance(module, types)
        else:
            wanted = _default_pick(module)
        if not wanted or (include and not _matches(name, include)):
            continue
        if exclude and _matches(name, exclude):
            continue
        picked.append((name, module))
    return picked


def plain_name(name: str) -> str:
    """A module name without ``torch.compile``'s ``_orig_mod`` wrapper segments, so a compiled
    submodule logs the same tags as the eager one.

    Example:
        >>> plain_name("net._orig_mod.0")
        'net.0'
    """
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def candidate_names(model: nn.Module, limit: int = 8) -> list[str]:
    """A few module names with their types, for error messages when nothing matched."""
    names = [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if name]
    return names[:limit]


def saturation_kind(module: nn.Module) -> Saturation | None:
    """``"tanh"`` or ``"sigmoid"`` for bounded activations whose saturation is meaningful."""
    if isinstance(module, _TANH_LIKE):
        # Hardtanh's subclass ReLU6 and other Hardtanh ranges are not saturating in (-1, 1)
        if not isinstance(module, nn.Hardtanh) or (module.min_val, module.max_val) == (-1, 1):
            return "tanh"
        return None
    if isinstance(module, _SIGMOID_LIKE):
        return "sigmoid"
    return None


def primary_tensor(output: object) -> Tensor | None:
    """The tensor a module's statistics describe: the output itself, or the first floating-point
    tensor found depth-first in a tuple, list or dict output (an LSTM's ``output``, not ``h_n``).
    """
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, Mapping):
        items: Iterator[object] = iter(output.values())
    elif isinstance(output, (tuple, list)):
        items = iter(output)
    else:
        return None
    for item in items:
        found = primary_tensor(item)
        if found is not None:
            return found
    return None


def module_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of a watched module (its whole subtree)."""
    return [p for p in module.parameters() if p.requires_grad]
