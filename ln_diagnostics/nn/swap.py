"""Replace every BatchNorm layer of a model with a per-sample normalization layer.

BatchNorm normalizes with statistics of the *batch*; it fails at batch size one, behaves
differently in training and evaluation, and couples samples. :func:`swap_batchnorm` replaces it,
in place and anywhere in the module tree, with a layer that normalizes each sample on its own:

* ``"layernorm"``: :class:`~ln_diagnostics.nn.norms.ChannelLayerNorm`, mean and variance over
  the channel dimension at every position;
* ``"groupnorm"``: ``nn.GroupNorm(1, C)``, mean and variance over channels *and* positions;
* ``"rmsnorm"``: :class:`~ln_diagnostics.nn.norms.ChannelRMSNorm`, root mean square over the
  channel dimension, no centering and no shift.

The per-channel scale and shift are carried over, running statistics are dropped: the swap
changes the function a pretrained model computes, so fine-tune after swapping.

A BatchNorm subclass that does more than normalize keeps what it does or is refused. timm's
``BatchNormAct2d`` (mobilenetv3, efficientnet, regnet, lcnet) normalizes, then applies its
``drop`` and ``act`` children: it becomes a :class:`NormAct` (the new norm, then the same
``drop`` and ``act`` modules). Any other subclass with children or its own ``forward`` is
replaced only if, on a test input, its output equals the torch BatchNorm forward followed by
its ``drop``/``act`` children; otherwise :func:`swap_batchnorm` raises before changing anything.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parallel import DistributedDataParallel

from ln_diagnostics._table import markdown_table, text_table
from ln_diagnostics._validate import check_bool, check_choice, check_globs, check_instance
from ln_diagnostics.nn.norms import ChannelLayerNorm, ChannelRMSNorm
from ln_diagnostics.tags import matches

__all__ = ["NormAct", "SwapEntry", "SwapReport", "SwapTarget", "swap_batchnorm"]

SwapTarget = Literal["layernorm", "groupnorm", "rmsnorm"]
TARGETS: tuple[str, ...] = get_args(SwapTarget)

ROOT_NAME = "(root)"

#: The layer each target builds; ``nn.GroupNorm`` with one group normalises over (C, H, W).
_TARGET_TYPES: dict[str, type[nn.Module]] = {
    "layernorm": ChannelLayerNorm,
    "groupnorm": nn.GroupNorm,
    "rmsnorm": ChannelRMSNorm,
}

BIAS_DROPPED_NOTE = "bias dropped (RMSNorm has no shift)"

#: Children a BatchNorm subclass may apply after normalizing, in this order (timm's
#: ``BatchNormAct2d`` and ``SyncBatchNormAct``: ``x = self.drop(x); x = self.act(x)``).
KEPT_CHILDREN = ("drop", "act")


class NormAct(nn.Module):
    """A per-sample norm followed by the ``drop`` and ``act`` modules of the BatchNorm subclass
    it replaced (timm's ``BatchNormAct2d``): ``act(drop(norm(x)))``.

    Args:
        norm: the new normalization layer.
        drop: the old layer's ``drop`` child (``nn.Identity`` when it had none).
        act: the old layer's ``act`` child (``nn.Identity`` when it had none).

    Example:
        >>> import torch
        >>> layer = NormAct(ChannelLayerNorm(4), act=nn.ReLU())
        >>> bool((layer(torch.randn(2, 4, 3, 3)) >= 0).all())
        True
    """

    def __init__(
        self, norm: nn.Module, *, drop: nn.Module | None = None, act: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.norm = norm
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


@dataclass(frozen=True)
class SwapEntry:
    """One replaced (or, in a dry run, replaceable) layer.

    Attributes:
        name: qualified name from ``named_modules()``; ``""`` for the root module.
        old_type: class name of the BatchNorm layer, e.g. ``"BatchNorm2d"``.
        new_type: class name of its replacement, e.g. ``"ChannelLayerNorm"``.
        note: anything the caller should know about this layer, e.g. a dropped bias or the
            children kept after the new norm.
        kept: names of the old layer's children that follow the new norm inside a
            :class:`NormAct` (``("drop", "act")`` for timm's ``BatchNormAct2d``), else ``()``.
    """

    name: str
    old_type: str
    new_type: str
    note: str = ""
    kept: tuple[str, ...] = ()


@dataclass
class SwapReport:
    """What :func:`swap_batchnorm` replaced.

    Attributes:
        model: the model after the swap. The same object that was passed, except when the root
            module itself was a BatchNorm layer: then it is the new root.
        swapped: one :class:`SwapEntry` per replaced layer, in ``named_modules()`` order.
        target: the normalization the layers were swapped for.
        dry_run: ``True`` when nothing was changed and ``swapped`` lists what would be.

    ``str(report)`` is an aligned table; :meth:`to_markdown` renders the same for TensorBoard.

    Example:
        >>> from torch import nn
        >>> report = swap_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
        >>> [(e.name, e.old_type, e.new_type) for e in report.swapped]
        [('1', 'BatchNorm2d', 'ChannelLayerNorm')]
    """

    model: nn.Module
    swapped: list[SwapEntry] = field(default_factory=list)
    target: str = "layernorm"
    dry_run: bool = False

    def _headline(self) -> str:
        n = len(self.swapped)
        if n == 0:
            return f"swap_batchnorm(target={self.target!r}): no BatchNorm layers matched"
        verb = "would be swapped (dry run)" if self.dry_run else "swapped"
        layers = "layer" if n == 1 else "layers"
        return f"swap_batchnorm(target={self.target!r}): {n} BatchNorm {layers} {verb}"

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["name", "old type", "new type"]
        with_notes = any(e.note for e in self.swapped)
        if with_notes:
            header.append("note")
        rows = []
        for e in self.swapped:
            row = [e.name or ROOT_NAME, e.old_type, e.new_type]
            if with_notes:
                row.append(e.note)
            rows.append(row)
        return header, rows

    def _footer(self) -> str:
        return (
            "Running statistics were dropped and the new layers normalize per sample: "
            "a pretrained model computes a different function now; fine-tune it."
        )

    def __str__(self) -> str:
        lines = [self._headline()]
        if not self.swapped:
            return lines[0]
        lines.append(text_table(*self._rows(), rule=True))
        if not self.dry_run:
            lines.append(self._footer())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a Markdown table (TensorBoard's text dashboard renders Markdown)."""
        headline = self._headline()
        if not self.swapped:
            return headline
        header, rows = self._rows()
        lines = [headline, "", markdown_table(header, [[f"`{r[0]}`", *r[1:]] for r in rows])]
        if not self.dry_run:
            lines += ["", self._footer()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- surgery


def _new_layer(old: _BatchNorm, target: str) -> nn.Module:
    """An untrained replacement for ``old`` with its channels, eps, affine flag, device, dtype."""
    tensors = [t for t in (old.weight, old.running_mean) if t is not None]
    factory = {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}
    layer = _TARGET_TYPES[target]
    sizes = (1, old.num_features) if layer is nn.GroupNorm else (old.num_features,)
    new = layer(*sizes, eps=old.eps, affine=old.affine, **factory)
    return new.train(old.training)


def _torch_base(layer: _BatchNorm) -> type[_BatchNorm]:
    """The nearest ``torch.nn`` class of ``layer`` (``BatchNorm2d`` for ``BatchNormAct2d``)."""
    return next(c for c in type(layer).__mro__ if c.__module__.startswith("torch.nn."))


def _test_input(layer: _BatchNorm) -> torch.Tensor:
    rank = 4
    if isinstance(layer, (nn.BatchNorm1d, nn.LazyBatchNorm1d)):
        rank = 3
    elif isinstance(layer, (nn.BatchNorm3d, nn.LazyBatchNorm3d)):
        rank = 5
    shape = (4, layer.num_features, 3, 3, 3)[:rank]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    floats = [t for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point()]
    return x.to(floats[0].device, floats[0].dtype) if floats else x


def _same_behaviour(layer: _BatchNorm, children: dict[str, nn.Module]) -> str:
    """``""`` when ``layer`` computes its torch base class's BatchNorm followed by ``children``
    (in :data:`KEPT_CHILDREN` order) on a test input, in train mode (same dropout masks) and in
    eval mode; otherwise what differs. Buffers, train/eval modes and the RNG state are restored,
    and no forward hook on the layer or its children sees the test input."""
    if any(t.is_meta for t in (*layer.parameters(), *layer.buffers())):
        return "its tensors are on the meta device, so what its forward computes cannot be checked"
    x = _test_input(layer)
    modules = list(layer.modules())
    modes = [(m, m.training) for m in modules]
    hooks = [(m, m._forward_pre_hooks, m._forward_hooks) for m in modules]
    buffers = [(b, b.detach().clone()) for b in layer.buffers()]
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    # train mode exercises dropout and batch statistics, eval mode the running ones; a
    # SyncBatchNorm in a process group is checked in eval mode only, so the check runs no
    # collective
    checked_modes = (
        [False] if isinstance(layer, nn.SyncBatchNorm) and distributed else [True, False]
    )
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    for module in modules:  # the user's hooks (or a collector's) must not see the test input
        module._forward_pre_hooks, module._forward_hooks = OrderedDict(), OrderedDict()
    try:
        for training in checked_modes:
            layer.train(training)
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                got = type(layer).forward(layer, x.clone())
                for live, saved in buffers:
                    live.copy_(saved)
                torch.manual_seed(0)
                want = _torch_base(layer).forward(layer, x.clone())
                for name in KEPT_CHILDREN:
                    if name in children:
                        want = children[name](want)
                for live, saved in buffers:
                    live.copy_(saved)
            try:
                torch.testing.assert_close(got, want)
            except AssertionError as error:
                first = str(error).strip().splitlines()[0]
                steps = " -> ".join(["BatchNorm", *(n for n in KEPT_CHILDREN if n in children)])
                mode = "train" if training else "eval"
                return f"its forward is not {steps} on a test input in {mode} mode ({first})"
    except Exception as error:
        shape = tuple(x.shape)
        return f"its forward raised {type(error).__name__}: {error} on an input of shape {shape}"
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        for module, mode in modes:
            module.training = mode
        for module, pre, post in hooks:
            module._forward_pre_hooks, module._forward_hooks = pre, post
    return ""


def _kept_children(layer: _BatchNorm) -> dict[str, nn.Module] | str:
    """The children to apply after the new norm (``{}`` for a plain BatchNorm), or why the
    layer cannot be replaced without changing what it computes."""
    children = dict(layer.named_children())
    if not children and type(layer).forward is _torch_base(layer).forward:
        return {}
    others = [n for n in children if n not in KEPT_CHILDREN]
    if others:
        return (
            f"it has children {others} besides {' and '.join(KEPT_CHILDREN)}, which a "
            "replacement would drop"
        )
    kept = {name: children[name] for name in KEPT_CHILDREN if name in children}
    return _same_behaviour(layer, kept) or kept


def _copy_param(dst: nn.Parameter | None, src: torch.Tensor | None) -> None:
    if dst is None or src is None:
        return
    with torch.no_grad():
        dst.copy_(src)
    dst.requires_grad_(src.requires_grad)


def _has_hooks(module: nn.Module) -> bool:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, n, None) for n in names)


def _refuse_ddp(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, DistributedDataParallel):
            where = "the model" if name == "" else f"submodule {name!r}"
            raise ValueError(
                f"model must not be wrapped in DistributedDataParallel; got {where} of type "
                f"{type(module).__name__}. DDP has already registered the parameters it "
                "synchronizes, so layers swapped inside it would not be trained correctly. "
                "Swap before wrapping: swap_batchnorm(model) then DistributedDataParallel(model); "
                "with Lightning, use the NormSwap callback, which swaps in setup() before the "
                "model is wrapped."
            )


def swap_batchnorm(
    model: nn.Module,
    *,
    target: SwapTarget = "layernorm",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    copy_affine: bool = True,
    dry_run: bool = False,
) -> SwapReport:
    """Replace every BatchNorm layer in ``model`` with a per-sample normalization, in place.

    All subclasses of ``torch.nn.modules.batchnorm._BatchNorm`` are found anywhere in the tree
    (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, initialized lazy variants and user subclasses,
    inside ``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict`` or any module). A layer that
    appears under several names is replaced by one new layer everywhere, so sharing is kept.

    A subclass with children or its own ``forward`` keeps its behaviour or is refused. If its
    children are only ``drop`` and/or ``act`` and, on a test input (train mode, same dropout
    masks; buffers, modes and RNG restored), its output equals the torch BatchNorm forward
    followed by ``drop`` then ``act`` — timm's ``BatchNormAct2d`` — it becomes a
    :class:`NormAct`: the new norm, then the same ``drop`` and ``act`` modules (the report's
    ``kept`` and note say so). Otherwise (another child, another computation, tensors on the
    meta device that cannot be checked) nothing is changed and ``ValueError`` lists every such
    layer and the ``exclude`` that leaves them out; a dry run raises the same.

    The new layer has the old one's channel count, ``eps``, ``affine`` flag, device, dtype and
    train/eval mode. With ``copy_affine`` the scale ``γ`` and shift ``β`` (and their
    ``requires_grad``) are copied; ``"rmsnorm"`` has no shift, so ``β`` is dropped, noted in the
    report and warned about when it is not zero. Running statistics are dropped: the new layers
    normalize each sample by its own statistics, so a pretrained model computes a different
    function after the swap and should be fine-tuned. Forward/backward hooks registered on a
    replaced layer are not carried over (a warning names the layer); register them after the
    swap.

    Swap *before* building the optimizer (it holds the old parameters) and before wrapping the
    model in ``DistributedDataParallel`` (refused with an error).

    Args:
        model: the model to change in place; may itself be a BatchNorm layer.
        target: ``"layernorm"`` (:class:`~ln_diagnostics.nn.norms.ChannelLayerNorm`),
            ``"groupnorm"`` (``nn.GroupNorm(1, C)``) or ``"rmsnorm"``
            (:class:`~ln_diagnostics.nn.norms.ChannelRMSNorm`).
        include: glob(s) over qualified module names (``fnmatch``, case-sensitive, ``*`` also
            matches dots; a glob naming a container stands for all of it, as in
            ``LayerDiagnostics``); only matching BatchNorm layers are swapped. ``None``: all.
        exclude: glob(s); matching layers are left alone, even if included.
        copy_affine: copy ``γ``/``β`` when both layers are affine; otherwise the new layer
            starts at ``γ = 1, β = 0``.
        dry_run: report what would be swapped without changing anything.

    Returns:
        A :class:`SwapReport`; ``report.model`` is the (possibly new) root module.

    Raises:
        ArgumentError: (a ``ValueError`` and a ``TypeError``) ``model`` is not an ``nn.Module``,
            an unknown ``target``, an empty ``include`` list or another bad option; the message
            names the argument, what was expected and what was received.
        ValueError: a model wrapped in ``DistributedDataParallel``, or a BatchNorm subclass whose
            behaviour a replacement cannot keep.
        RuntimeError: a lazy BatchNorm layer that has not seen an input yet (its channel count
            is unknown); run one forward pass first.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> report = swap_batchnorm(model, target="layernorm")
        >>> type(model[1]).__name__
        'ChannelLayerNorm'
        >>> model(torch.randn(1, 3, 8, 8)).shape  # batch size 1 works now
        torch.Size([1, 8, 6, 6])
        >>> swap_batchnorm(model).swapped  # idempotent
        []
    """
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    check_choice("target", target, TARGETS)
    include_p = check_globs("include", include, allow_empty=False)
    exclude_p = check_globs("exclude", exclude)
    check_bool("copy_affine", copy_affine)
    check_bool("dry_run", dry_run)
    _refuse_ddp(model)

    # Every name of every BatchNorm layer (a shared layer has several).
    names_of: dict[int, list[str]] = {}
    layers: dict[int, _BatchNorm] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, _BatchNorm):
            names_of.setdefault(id(module), []).append(name)
            layers[id(module)] = module

    selected = [
        key
        for key, names in names_of.items()
        if (not include_p or any(matches(n, include_p, subtree=True) for n in names))
        and not any(matches(n, exclude_p, subtree=True) for n in names)
    ]

    # Check everything before changing anything.
    for key in selected:
        layer = layers[key]
        if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
            raise RuntimeError(
                f"cannot swap {names_of[key][0] or ROOT_NAME!r} ({type(layer).__name__}): a lazy "
                "layer does not know its number of channels until it has seen an input. Run one "
                "forward pass (e.g. model(example_batch)) before calling swap_batchnorm."
            )
    kept = {key: _kept_children(layers[key]) for key in selected}
    refused = [
        (names_of[key][0] or ROOT_NAME, key) for key in selected if isinstance(kept[key], str)
    ]
    if refused:
        lines = [f"  {name!r} ({type(layers[key]).__name__}): {kept[key]}" for name, key in refused]
        raise ValueError(
            f"swap_batchnorm cannot replace {len(refused)} BatchNorm subclass layer(s) without "
            "changing what they compute; the model was not changed:\n"
            + "\n".join(lines)
            + f"\nLeave them out with exclude={[name for name, _ in refused]!r}, or build them "
            "as a plain BatchNorm followed by separate modules (a subclass whose forward is "
            "BatchNorm, then its 'drop', then its 'act' child, like timm's BatchNormAct2d, is "
            "kept as NormAct)."
        )

    new_type = _TARGET_TYPES[target].__name__
    entries: list[SwapEntry] = []
    replacement: dict[int, nn.Module] = {}
    dropped_bias: list[str] = []
    hooked: list[str] = []
    for key in selected:
        old = layers[key]
        name = names_of[key][0]
        children: dict[str, nn.Module] = kept[key]  # type: ignore[assignment]
        notes = []
        if target == "rmsnorm" and old.affine and copy_affine:
            notes.append(BIAS_DROPPED_NOTE)
            bias = old.bias.detach()
            if bias.device.type != "meta" and bool(torch.any(bias != 0)):
                dropped_bias.append(name or ROOT_NAME)
        layer_type = new_type
        if children:
            layer_type = f"{NormAct.__name__}({new_type})"
            kept_list = ", ".join(f"{n} ({type(m).__name__})" for n, m in children.items())
            notes.append(f"kept {kept_list} after the new norm")
        entries.append(
            SwapEntry(name, type(old).__name__, layer_type, "; ".join(notes), tuple(children))
        )
        if dry_run:
            continue
        new = _new_layer(old, target)
        if copy_affine and old.affine:
            _copy_param(getattr(new, "weight", None), old.weight)
            _copy_param(getattr(new, "bias", None), old.bias)
        if _has_hooks(old):
            hooked.append(name or ROOT_NAME)
        if children:
            new = NormAct(new, **children)
            new.training = old.training  # the kept children keep their own modes
        replacement[key] = new

    report = SwapReport(model=model, swapped=entries, target=target, dry_run=dry_run)
    if dry_run or not replacement:
        return report

    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                setattr(parent, child_name, replacement[id(child)])
    if id(model) in replacement:
        report.model = replacement[id(model)]

    if dropped_bias:
        warnings.warn(
            f"swap_batchnorm(target='rmsnorm') dropped the non-zero BatchNorm shift (beta) of "
            f"{', '.join(dropped_bias)}: RMSNorm has no bias. Use target='layernorm' to keep it.",
            UserWarning,
            stacklevel=2,
        )
    if hooked:
        warnings.warn(
            f"swap_batchnorm: hooks registered on {', '.join(hooked)} were not carried over to "
            "the new layers; register them after the swap (put NormSwap before other callbacks).",
            UserWarning,
            stacklevel=2,
        )
    return report
