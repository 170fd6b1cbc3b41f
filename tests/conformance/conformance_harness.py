"""Run one conformance case twice (plain, then with ``LayerDiagnostics()``) and check the result.

Shared by ``test_conformance.py`` (in-process cases) and ``ddp_worker.py`` (each DDP rank), so
that every case is held to the same checks:

- ``warnings``: no warning raised from a file of the ``ln_diagnostics`` package;
- ``tags``: every tag group, and activation and gradient histograms, present in the event file,
  read back with TensorBoard's ``EventAccumulator``;
- ``layers``: every module that ran at step 0 and that the README says is watched (leaf modules
  with parameters, norm and activation modules) has activation statistics, and every trainable
  parameter's gradient is counted in some ``gradients/norm/<layer>``;
- ``grad_norms``: ``gradients/norm/<layer>`` and ``health/grad_norm_total`` equal the float64
  norm of the gradients a plain callback copied at ``on_before_optimizer_step``;
- ``hooks``: the model carries the same hooks after ``fit`` as after the plain run, and pickles;
- ``trajectory``: per-step losses and the final ``state_dict`` are bit-for-bit those of the plain
  run;
- ``swap`` (NormSwap cases only): every module of the model that is not a BatchNorm layer is
  still in it after the swap (e.g. the ``act`` child of a timm-style ``BatchNormAct2d``).

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import math
import pickle
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, seed_everything
from torch import nn

import ln_diagnostics
from ln_diagnostics.tags import layer_name

PACKAGE_DIR = Path(ln_diagnostics.__file__).resolve().parent
#: tag groups every case logs; histograms by default at step 0 (10x the scalar interval)
GROUPS = (
    "activations",
    "gradients",
    "backprop",
    "parameters",
    "updates",
    "health",
    "shift",
    "activations/hist",
    "gradients/hist",
)
CHECKS = ("warnings", "tags", "layers", "grad_norms", "hooks", "trajectory", "swap")
REL = 1e-5
OK = "ok"

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_TORCH_ACTIVATIONS = tuple(
    getattr(nn.modules.activation, name) for name in nn.modules.activation.__all__
)


def expected_watched(module: nn.Module) -> bool:
    """The README's default selection, restated here: leaf modules with parameters of their own,
    normalization modules, activation modules (torch's, and by name such as Hugging Face's
    ``NewGELUActivation``)."""
    kind = type(module).__name__
    leaf_with_params = next(module.children(), None) is None and any(
        True for _ in module.parameters(recurse=False)
    )
    is_norm = isinstance(module, _NORMS) or "Norm" in kind
    is_activation = isinstance(module, _TORCH_ACTIVATIONS) or kind.endswith("Activation")
    return leaf_with_params or is_norm or is_activation


@dataclass
class Run:
    """What one ``fit`` left behind, in plain picklable values (DDP ranks save it to disk)."""

    losses: list[torch.Tensor] = field(default_factory=list)
    #: step -> parameter name -> float64 gradient (each parameter once, under its first name)
    grads: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    #: modules whose forward ran during step 0 (recorded when ``trace``)
    ran: list[str] = field(default_factory=list)
    #: layers that ran at step 0 and are watched by the README's default rule
    expected: list[str] = field(default_factory=list)
    #: layer -> the parameters its ``gradients/norm`` covers: its subtree, or for ``<root>`` the
    #: parameters that sit on the root module itself
    layer_params: dict[str, list[str]] = field(default_factory=dict)
    lost_modules: list[str] = field(default_factory=list)
    hooks: tuple[int, int] = (0, 0)
    pickle_error: str | None = None
    warnings: list[str] = field(default_factory=list)
    log_dir: str | None = None
    error: str | None = None


class Recorder(Callback):
    """A plain callback: per-step losses, float64 copies of the gradients at
    ``on_before_optimizer_step`` (before clipping, as the plugin reads them) and, when
    ``trace``, the names of the modules whose forward ran during step 0."""

    def __init__(self, run: Run, *, trace: bool) -> None:
        self.run = run
        self.trace = trace
        self._handles: list[Any] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.trace and trainer.global_step == 0 and batch_idx == 0:
            seen = self.run.ran

            def hook(name: str) -> Callable[..., None]:
                def record(module, args, output) -> None:
                    if name not in seen:
                        seen.append(name)

                return record

            self._handles = [
                m.register_forward_hook(hook(name)) for name, m in pl_module.named_modules()
            ]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = self.run.grads.setdefault(trainer.global_step, {})
        for name, p in pl_module.named_parameters():
            if p.requires_grad and p.grad is not None and name not in grads:
                grads[name] = p.grad.detach().to(torch.float64, copy=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.run.losses.append(loss.detach().clone())


def _kinds(model: nn.Module) -> Counter:
    """Module classes other than BatchNorm layers, counted."""
    return Counter(
        type(m).__qualname__
        for m in model.modules()
        if not isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


def _layer_params(model: nn.Module) -> dict[str, list[str]]:
    first_name: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first_name.setdefault(id(p), name)
    return {
        layer_name(name): sorted({first_name[id(p)] for p in m.parameters(recurse=bool(name))})
        for name, m in model.named_modules()
    }


def fit_once(
    make_module: Callable[[], LightningModule],
    make_trainer: Callable[[list[Callback]], Any],
    callbacks: list[Callback],
    *,
    plugin: Callback | None,
    hook_counts: Callable[[nn.Module], tuple[int, int]],
) -> Run:
    """Seed, build the module, ``fit`` it with ``callbacks`` (and ``plugin``), record a ``Run``.

    The plain run (``plugin=None``) also traces which modules ran at step 0. ``hook_counts``
    gives the (module hooks, tensor hooks) on a model: the ``hooks`` and ``tensor_hooks``
    fixtures of ``tests/conftest.py``.
    """
    run = Run()
    seed_everything(0, verbose=False)
    module = make_module()
    kinds_before = _kinds(module)
    trainer = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = make_trainer(
                [*callbacks, *([plugin] if plugin else []), Recorder(run, trace=plugin is None)]
            )
            trainer.fit(module)
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc()
    run.warnings = [
        f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"[:300]
        for w in caught
        if PACKAGE_DIR in Path(w.filename).resolve().parents
    ]
    run.hooks = hook_counts(module)
    try:
        pickle.dumps(module)
    except Exception as exc:
        run.pickle_error = f"{type(exc).__name__}: {exc}"[:200]
    if run.error is not None:
        return run
    run.log_dir = trainer.logger.log_dir
    run.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    kinds_after = _kinds(module)
    run.lost_modules = sorted(
        f"{kind} x{n - kinds_after[kind]}"
        for kind, n in kinds_before.items()
        if kinds_after[kind] < n
    )
    modules = dict(module.named_modules())
    run.expected = [layer_name(n) for n in run.ran if n and expected_watched(modules[n])]
    run.layer_params = _layer_params(module)
    return run


# ---------------------------------------------------------------------- checks


def _logged(acc: Any) -> dict[str, dict[int, float]]:
    """Every series of an ``EventAccumulator``: tag -> step -> value (a histogram's value is the
    number of values it counts)."""
    tags = acc.Tags()
    logged = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags["scalars"]}
    for t in tags["histograms"]:
        logged[t] = {e.step: e.histogram_value.num for e in acc.Histograms(t)}
    return logged


def _first(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_warnings(plain: Run, ours: Run, logged: dict) -> str:
    if not ours.warnings:
        return OK
    by_site: dict[str, list[str]] = {}  # "file:line" -> its messages
    for text in ours.warnings:
        site, _, message = text.partition(": ")
        by_site.setdefault(site, []).append(message)
    sites = [f"{len(msgs)}x {site}: {msgs[0][:160]}" for site, msgs in by_site.items()]
    return f"FAIL {len(ours.warnings)} warnings: " + " | ".join(sites)


def check_tags(plain: Run, ours: Run, logged: dict) -> str:
    present = {part for t in logged for part in (t.split("/")[0], "/".join(t.split("/")[:2]))}
    missing = [g for g in GROUPS if g not in present]
    return OK if not missing else f"FAIL no {', '.join(missing)} tags"


def check_layers(plain: Run, ours: Run, logged: dict) -> str:
    with_stats = {t.split("/", 2)[2] for t in logged if t.startswith("activations/mean/")}
    missing = [layer for layer in plain.expected if layer not in with_stats]
    covered = {
        name
        for t in logged
        if t.startswith("gradients/norm/")
        for name in ours.layer_params.get(t.split("/", 2)[2], [])
    }
    uncovered = sorted({n for step in ours.grads.values() for n in step} - covered)
    problems = []
    if missing:
        problems.append(f"no activations/ for {_first(missing)}")
    if uncovered:
        problems.append(f"gradient of {_first(uncovered)} in no gradients/norm/")
    return OK if not problems else "FAIL " + "; ".join(problems)


def _norm(grads: Mapping[str, torch.Tensor], names: list[str] | None = None) -> float:
    values = grads.values() if names is None else [grads[n] for n in names if n in grads]
    return math.sqrt(math.fsum(g.square().sum().item() for g in values))


def check_grad_norms(plain: Run, ours: Run, logged: dict) -> str:
    compared, bad = 0, []
    for tag, series in logged.items():
        if tag.startswith("gradients/norm/"):
            names = ours.layer_params.get(tag.split("/", 2)[2])
            if names is None:
                bad.append(f"{tag}: no module of that name")
                continue
        elif tag == "health/grad_norm_total":
            names = None
        else:
            continue
        for step, value in series.items():
            ref = _norm(ours.grads.get(step, {}), names)
            compared += 1
            if not math.isclose(value, ref, rel_tol=REL):
                bad.append(f"{tag}@{step} {value:.7g} vs {ref:.7g}")
    if not compared:
        return "FAIL no gradient norms logged"
    return OK if not bad else f"FAIL {len(bad)}/{compared}: {_first(bad, 1)}"


def check_hooks(plain: Run, ours: Run, logged: dict) -> str:
    problems = []
    if ours.hooks != plain.hooks:
        problems.append(f"hooks (module, tensor) {ours.hooks} != {plain.hooks} without us")
    if ours.pickle_error and ours.pickle_error != plain.pickle_error:
        problems.append(f"pickle: {ours.pickle_error}")
    if problems:
        return "FAIL " + "; ".join(problems)
    return (
        OK
        if not plain.pickle_error
        else f"ok (does not pickle without us either: {plain.pickle_error})"
    )


def check_trajectory(plain: Run, ours: Run, logged: dict) -> str:
    if len(plain.losses) != len(ours.losses):
        return f"FAIL {len(ours.losses)} steps vs {len(plain.losses)}"
    for i, (a, b) in enumerate(zip(plain.losses, ours.losses, strict=True)):
        if not torch.equal(a, b):
            return f"FAIL loss of batch {i}: {b.item():.9g} vs {a.item():.9g}"
    if plain.state.keys() != ours.state.keys():
        return "FAIL state_dict keys differ"
    changed = [k for k in plain.state if not torch.equal(plain.state[k], ours.state[k])]
    return OK if not changed else f"FAIL final {_first(changed)} differ"


def check_swap(plain: Run, ours: Run, logged: dict) -> str:
    return OK if not ours.lost_modules else f"FAIL swap removed {_first(ours.lost_modules)}"


CHECK_FUNCTIONS = {
    "warnings": check_warnings,
    "tags": check_tags,
    "layers": check_layers,
    "grad_norms": check_grad_norms,
    "hooks": check_hooks,
    "trajectory": check_trajectory,
    "swap": check_swap,
}


def evaluate(plain: Run, ours: Run, *, swap: bool, events: Callable[[str], Any]) -> dict[str, str]:
    """One result per check: ``"ok"``, ``"FAIL <reason>"`` or ``"-"`` (not applicable).

    ``events`` reads a log directory into an ``EventAccumulator`` (the ``events`` fixture).
    """
    if plain.error is not None:
        return {name: f"FAIL plain run: {plain.error}" for name in CHECKS}
    logged = _logged(events(ours.log_dir)) if ours.log_dir else {}
    results = {}
    for name in CHECKS:
        if name == "swap" and not swap:
            results[name] = "-"
        elif ours.error is not None and name not in ("warnings", "hooks"):
            results[name] = f"FAIL crash: {ours.error}"
        else:
            try:
                results[name] = CHECK_FUNCTIONS[name](plain, ours, logged)
            except Exception as exc:
                results[name] = f"FAIL check raised {type(exc).__name__}: {exc}"[:200]
    return results
