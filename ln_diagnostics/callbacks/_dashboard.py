"""Glue between ``LayerDiagnostics`` and :class:`~ln_diagnostics.tensorboard.dashboard.Dashboard`:
what the Trainer knows (options, selected layers, the model's hyperparameters, a NormSwap report)
turned into the dashboard's inputs."""

from __future__ import annotations

from typing import Any

from ln_diagnostics.collect.selection import module_parameters
from ln_diagnostics.tensorboard.dashboard import Dashboard
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    changed_options,
    constructor_options,
    find_swap_report,
)


def _given_options(callback: Any) -> dict[str, Any]:
    return constructor_options(
        callback, getattr(getattr(callback, "_probes", None), "options", None)
    )


def run_options(callback: Any) -> dict[str, Any]:
    """The callback's constructor options, with the intervals the Trainer resolved."""
    options = _given_options(callback)
    options["every_n_steps"] = callback._every
    options["histogram_every_n_steps"] = callback._hist_every
    return options


def varied_options(callback: Any) -> dict[str, Any]:
    """The options given a value other than their default, with the intervals resolved: what the
    HParams tab compares runs by."""
    resolved = run_options(callback)
    return {name: resolved[name] for name in changed_options(callback, _given_options(callback))}


def layer_types(collector: Any) -> dict[str, str]:
    """Module class name per logged layer (per block with ``group_depth``: the class of its layers
    when they share one, else ``block``)."""
    groups = collector.group_names or collector.names
    types: dict[str, set[str]] = {}
    for group, module in zip(groups, collector.modules, strict=True):
        types.setdefault(group, set()).add(type(module).__name__)
    return {name: kinds.pop() if len(kinds) == 1 else "block" for name, kinds in types.items()}


def model_hparams(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The hyperparameters Lightning would log for this run (module and datamodule)."""
    merged: dict[str, Any] = {}
    datamodule = getattr(trainer, "datamodule", None)
    for owner in (pl_module, datamodule):
        if owner is not None and getattr(owner, "_log_hyperparams", True):
            merged.update(dict(getattr(owner, "hparams_initial", None) or {}))
    merged.pop("_class_path", None)
    return merged


def start_dashboard(callback: Any, trainer: Any, pl_module: Any) -> Dashboard | None:
    """A dashboard for the callback's writer, with the run's HParams session already written.

    Runs in ``setup``, before Lightning logs the module's hyperparameters: TensorBoard keeps a
    run's first HParams session, so this one carries the module's hyperparameters too.
    """
    if callback._writer is None:
        return None
    # the pictures take ~0.3 s to draw: at the histogram interval, else every 100 logging steps,
    # and at fit end (finish_dashboard)
    every = callback._hist_every or 100 * callback._every
    dashboard = Dashboard(
        callback._writer,
        heatmap_every_n_steps=every,
        layer_types=layer_types(callback._collector),
    )
    dashboard.load_state_dict(callback._dashboard_state)
    dashboard.write_hparams(
        varied_options(callback), model_hparams=model_hparams(trainer, pl_module)
    )
    return dashboard


def dashboard_state(callback: Any) -> dict[str, Any]:
    """The dashboard's part of the callback's checkpoint state."""
    dashboard = callback._dashboard
    return {"dashboard": callback._dashboard_state if dashboard is None else dashboard.state_dict()}


def restore_dashboard(callback: Any, state_dict: dict[str, Any]) -> None:
    """Restore the dashboard's state, now or when :func:`start_dashboard` creates it."""
    callback._dashboard_state = dict(state_dict.get("dashboard", {}))
    if callback._dashboard is not None:
        callback._dashboard.load_state_dict(callback._dashboard_state)


def finish_dashboard(callback: Any) -> None:
    """At fit end: the pictures of the last logging step."""
    if callback._dashboard is not None:
        callback._dashboard.finish()


def write_run_summary(callback: Any, trainer: Any) -> None:
    """The text summary: watched layers, options and a NormSwap report if one ran."""
    dashboard, collector = callback._dashboard, callback._collector
    if dashboard is None or collector is None:
        return
    groups = getattr(collector, "group_names", None)
    rows = [
        LayerRow(
            name,
            type(module).__name__,
            sum(p.numel() for p in module_parameters(module)),
            None if groups is None else groups[k],
        )
        for k, (name, module) in enumerate(zip(collector.names, collector.modules, strict=True))
    ]
    report = find_swap_report(getattr(trainer, "callbacks", None) or [])
    dashboard.write_summary(
        rows,
        run_options(callback),
        swap_report=None if report is None else report.to_markdown(),
        step=trainer.global_step,
    )
