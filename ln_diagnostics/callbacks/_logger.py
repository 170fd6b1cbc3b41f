"""Find where a Lightning run writes, without ``isinstance`` checks against one Lightning package.

Both ``pytorch_lightning`` and ``lightning.pytorch`` loggers are recognised by what they offer:
a TensorBoard logger has an ``experiment`` that is a ``SummaryWriter`` (it has
``add_histogram`` and a file writer) and a ``log_dir``.
"""

from __future__ import annotations

from typing import Any


def tensorboard_writer(trainer: Any) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoard logger, or ``None``.

    Only call this on global rank 0: Lightning hands other ranks a dummy experiment.
    """
    for logger in getattr(trainer, "loggers", None) or []:
        if not hasattr(logger, "log_dir"):
            continue
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_histogram") and hasattr(experiment, "_get_file_writer"):
            return experiment
    return None


def describe_loggers(trainer: Any) -> str:
    """A short, human-readable list of the trainer's loggers for messages."""
    loggers = getattr(trainer, "loggers", None) or []
    return ", ".join(type(logger).__name__ for logger in loggers) or "none"
