"""What the engine knows (options, watched layers, the model's hyperparameters, a NormSwap report)
turned into :class:`~ln_diagnostics.tensorboard.dashboard.Dashboard` inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import module_parameters
from ln_diagnostics.tensorboard.dashboard import Dashboard
from ln_diagnostics.tensorboard.summary_text import LayerRow


def layer_types(collector: Collector) -> dict[str, str]:
    """Module class name per logged layer (per block with ``group_depth``: the class of its layers
    when they share one, else ``block``)."""
    groups = collector.group_names or collector.names
    types: dict[str, set[str]] = {}
    for group, module in zip(groups, collector.modules, strict=True):
        types.setdefault(group, set()).add(type(module).__name__)
    return {name: kinds.pop() if len(kinds) == 1 else "block" for name, kinds in types.items()}


def start_dashboard(
    writer: Any,
    collector: Collector,
    *,
    heatmap_every_n_steps: int,
    varied: Mapping[str, Any],
    model_hparams: Mapping[str, Any],
    state: Mapping[str, Any],
    warn: Callable[[str], None],
) -> Dashboard:
    """A dashboard for ``writer``, with the run's HParams session already written.

    Under Lightning this runs in ``setup``, before Lightning logs the module's hyperparameters:
    TensorBoard keeps a run's first HParams session, so this one carries them too.
    """
    dashboard = Dashboard(
        writer,
        heatmap_every_n_steps=heatmap_every_n_steps,
        layer_types=layer_types(collector),
        warn=warn,
    )
    dashboard.load_state_dict(state)
    dashboard.write_hparams(dict(varied), model_hparams=dict(model_hparams))
    return dashboard


def layer_rows(collector: Collector) -> list[LayerRow]:
    """The run summary's table of watched layers."""
    groups = collector.group_names
    return [
        LayerRow(
            name,
            type(module).__name__,
            sum(p.numel() for p in module_parameters(module)),
            None if groups is None else groups[k],
        )
        for k, (name, module) in enumerate(zip(collector.names, collector.modules, strict=True))
    ]
