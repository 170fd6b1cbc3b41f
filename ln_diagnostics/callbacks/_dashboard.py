"""Glue between ``LayerDiagnostics`` and :class:`~ln_diagnostics.tensorboard.dashboard.Dashboard`:
what the Trainer knows (options, selected layers, the model's hyperparameters, a NormSwap report)
turned into the dashboard's inputs."""

from __future__ import annotations

from typing import Any

from ln_diagnostics.collect.selection import module_parameters
from ln_diagnostics.tensorboard.dashboard import Dashboard
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    constructor_options,
    find_swap_report,
)


def run_options(callback: Any) -> dict[str, Any]:
    """The callback's constructor options, with the intervals the Trainer resolved."""
    options = constructor_options(
        callback, getattr(getattr(callback, "_probes", None), "options", None)
    )
    options["every_n_steps"] = callback._every
    options["histogram_every_n_steps"] = callback._hist_every
    return options


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
    # heat maps take ~0.1 s to render: at the histogram interval, else every 100 logging steps
    every = callback._hist_every or 100 * callback._every
    dashboard = Dashboard(callback._writer, heatmap_every_n_steps=every)
    dashboard.write_hparams(run_options(callback), model_hparams=model_hparams(trainer, pl_module))
    return dashboard


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
