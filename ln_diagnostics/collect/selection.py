"""Which modules of a model are watched, and how their outputs are read.

Example:
    >>> from torch import nn
    >>> class NewGELUActivation(nn.Module):  # Hugging Face's, abridged
    ...     def forward(self, x):
    ...         return nn.functional.gelu(x, approximate="tanh")
    >>> model = nn.Sequential(nn.Linear(2, 4), NewGELUActivation(), nn.Dropout(), nn.Linear(4, 1))
    >>> [name for name, _ in select_modules(model)]
    ['0', '1', '3']
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ln_diagnostics._validate import argument_error, describe
from ln_diagnostics.errors import ArgumentError
from ln_diagnostics.stats.moments import Saturation
from ln_diagnostics.tags import matches

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
#: Class names of activation modules written outside torch: Hugging Face's ``NewGELUActivation``,
#: ``QuickGELUActivation``, ``GELUTanh``; timm's ``Swish``, ``HardMish``, ``Tanh``; ...
_ACTIVATION_NAME = re.compile(
    r"Activation$|GELU|GeLU|SiLU|ReLU|ELU|Tanh|Sigmoid|Swish|Mish|Softplus"
)
#: Inputs on which an activation of unknown class is tried once, to see whether it saturates.
_SATURATION_PROBE = (-1e4, -30.0, -10.0, -3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0, 10.0, 30.0, 1e4)


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
                raise ArgumentError(
                    "types",
                    f"types: could not import {entry!r} (expected a dotted path to an nn.Module "
                    f"class such as 'torch.nn.Linear'): {exc}",
                ) from None
        if not (isinstance(entry, type) and issubclass(entry, nn.Module)):
            raise argument_error(
                "types", "nn.Module classes or their dotted paths", describe(entry)
            )
        resolved.append(entry)
    return tuple(resolved)


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def is_activation_module(module: nn.Module) -> bool:
    """True for torch's activation modules and for leaf modules whose class is named like one
    (ends in ``Activation`` or contains ``GELU``, ``SiLU``, ``ReLU``, ``ELU``, ``Tanh``,
    ``Sigmoid``, ``Swish``, ``Mish`` or ``Softplus``): Hugging Face's ``NewGELUActivation``,
    ``GELUActivation``, ``FastGELUActivation``, ``QuickGELUActivation`` (also as built by
    ``ACT2FN``), timm's ``Swish`` or ``GELUTanh``.

    Example:
        >>> from torch import nn
        >>> class QuickGELUActivation(nn.Module):
        ...     def forward(self, x):
        ...         return x * (1.702 * x).sigmoid()
        >>> is_activation_module(QuickGELUActivation()), is_activation_module(nn.Dropout())
        (True, False)
    """
    if isinstance(module, _ACTIVATION_TYPES):
        return True
    return _is_leaf(module) and _ACTIVATION_NAME.search(type(module).__name__) is not None


def _default_pick(module: nn.Module) -> bool:
    has_own_params = next(module.parameters(recurse=False), None) is not None
    return (
        (_is_leaf(module) and has_own_params)
        or is_norm_module(module)
        or is_activation_module(module)
    )


def _rule(types: tuple[type, ...] | None) -> Callable[[nn.Module], bool]:
    """Which modules are candidates before ``include`` and ``exclude``."""
    return _default_pick if types is None else (lambda module: isinstance(module, types))


def select_modules(
    model: nn.Module,
    *,
    types: tuple[type, ...] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[tuple[str, nn.Module]]:
    """Pick the watched modules, in registration order.

    By default: every leaf module with parameters of its own, plus every normalization and
    activation module (:func:`is_activation_module`). ``types`` replaces that rule with
    ``isinstance`` checks; ``include`` keeps only modules whose name, or an ancestor's name,
    matches one of its globs (so ``"model.transformer.h.0"`` selects that block's watched
    modules); ``exclude`` then drops modules the same way.
    """
    picked = []
    wanted = _rule(types)
    for name, module in model.named_modules():
        name = plain_name(name)
        if not wanted(module) or (include and not matches(name, include, subtree=True)):
            continue
        if exclude and matches(name, exclude, subtree=True):
            continue
        picked.append((name, module))
    return picked


def parameter_owners(
    model: nn.Module,
    modules: Sequence[tuple[str, nn.Module]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[tuple[str, list[nn.Parameter]]]:
    """Trainable parameters that no watched module holds, by the module that holds them.

    A ViT's ``cls_token`` and ``pos_embed`` live on the model itself (``""``, logged as
    ``<root>``), or on ``net`` when a LightningModule holds the ViT as ``self.net``; a block's
    layer-scale ``gamma`` lives on the block. Owners are filtered by ``include``/``exclude`` like
    modules (:func:`select_modules`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> vit = nn.Module()
        >>> vit.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        >>> vit.head = nn.Linear(4, 2)
        >>> [(name, len(params)) for name, params in parameter_owners(vit, select_modules(vit))]
        [('', 1)]
    """
    seen = {id(p) for _, module in modules for p in module.parameters()}
    owners = []
    for name, module in model.named_modules():
        name = plain_name(name)
        if (include and not matches(name, include, subtree=True)) or (
            exclude and matches(name, exclude, subtree=True)
        ):
            continue
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            owners.append((name, own))
    return owners


def plain_name(name: str) -> str:
    """A module name without ``torch.compile``'s ``_orig_mod`` wrapper segments, so a compiled
    submodule logs the same tags as the eager one.

    Example:
        >>> plain_name("net._orig_mod.0")
        'net.0'
    """
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def no_match_message(
    model: nn.Module,
    *,
    types: tuple[type, ...] | None,
    include: Sequence[str],
    exclude: Sequence[str],
    limit: int = 8,
) -> str:
    """Why :func:`select_modules` picked nothing, and a few names it would pick without
    ``include`` and ``exclude``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout()))
        >>> print(no_match_message(model, types=None, include=["1"], exclude=[]))
        ... # doctest: +NORMALIZE_WHITESPACE
        no module of Sequential matched types=None, include=['1'], exclude=[]: include matched
        1 (Sequential), but no module watched by default (a leaf with parameters, a norm or
        an activation module) lies in its subtree; some module names: 0 (Linear)
    """
    rule = "watched by default (a leaf with parameters, a norm or an activation module)"
    if types is not None:
        rule = "of the given types"
    named = [(plain_name(name), m) for name, m in model.named_modules() if name]
    wanted = _rule(types)
    candidates = [(name, m) for name, m in named if wanted(m)]
    named_by_glob = [(name, m) for name, m in named if matches(name, include)]
    if include and not named_by_glob:
        reason = "include matched no module name"
    elif not candidates:
        reason = f"the model has no module {rule}"
    elif include and not any(matches(name, include, subtree=True) for name, _ in candidates):
        shown = ", ".join(f"{name} ({type(m).__name__})" for name, m in named_by_glob[:limit])
        reason = f"include matched {shown}, but no module {rule} lies in its subtree"
    else:
        reason = "exclude removed every module that was left"
    listed = ", ".join(f"{name} ({type(m).__name__})" for name, m in candidates[:limit])
    return (
        f"no module of {type(model).__name__} matched types={types}, include={list(include)}, "
        f"exclude={list(exclude)}: {reason}; some module names: {listed or '(none)'}"
    )


def saturation_kind(module: nn.Module) -> Saturation | None:
    """``"tanh"`` or ``"sigmoid"`` for bounded activations whose saturation is meaningful.

    torch's classes are known; an activation of another class without parameters or buffers
    (:func:`is_activation_module`) is tried once on a few inputs from -1e4 to 1e4: a
    non-decreasing response bounded by ±1 that reaches both is tanh-like, one bounded by 0 and 1
    that reaches both is sigmoid-like (so a GELU with a tanh approximation is neither).

    Example:
        >>> from torch import nn
        >>> class ScaledSigmoid(nn.Module):
        ...     def forward(self, x):
        ...         return (2 * x).sigmoid()
        >>> [saturation_kind(m) for m in (ScaledSigmoid(), nn.ReLU6(), nn.Tanh())]
        ['sigmoid', None, 'tanh']
    """
    if isinstance(module, _TANH_LIKE):
        # Hardtanh's subclass ReLU6 and other Hardtanh ranges are not saturating in (-1, 1)
        if not isinstance(module, nn.Hardtanh) or (module.min_val, module.max_val) == (-1, 1):
            return "tanh"
        return None
    if isinstance(module, _SIGMOID_LIKE):
        return "sigmoid"
    if isinstance(module, _ACTIVATION_TYPES) or not is_activation_module(module):
        return None
    if next(module.parameters(), None) is not None or next(module.buffers(), None) is not None:
        return None
    return _tried_saturation(module)


def _tried_saturation(module: nn.Module) -> Saturation | None:
    """The saturation kind of a parameter-free activation, from its response (see above)."""
    x = torch.tensor(_SATURATION_PROBE)
    try:
        with torch.no_grad():
            y = module.forward(x)  # forward, not __call__: the model's own hooks do not fire
    except Exception:  # not elementwise on a vector: no saturation statistic
        return None
    if not isinstance(y, Tensor) or y.shape != x.shape or not y.is_floating_point():
        return None
    values = y.detach().double().cpu()
    if values.isnan().any() or (values.diff() < 0).any():  # not a non-decreasing response
        return None
    low, high = values[0].item(), values[-1].item()
    if -1.0 <= low < -0.99 and 0.99 < high <= 1.0:
        return "tanh"
    if 0.0 <= low < 0.01 and 0.99 < high <= 1.0:
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
