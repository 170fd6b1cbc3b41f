"""Fixtures shared by the test packages: a quiet CPU Trainer, event-file reading, hook counts."""

import pytest
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter


def _trainer(tmp_path, callbacks, **kwargs):
    kwargs.setdefault("logger", TensorBoardLogger(tmp_path, name="run"))
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        accelerator=kwargs.pop("accelerator", "cpu"),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _write_run(directory, scalars):
    """Write ``{tag: [(step, value), ...]}`` as one run's event file; return the directory."""
    writer = SummaryWriter(str(directory))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    return directory


def _module_hooks(model):
    """Forward, forward-pre and backward hooks on every submodule."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def _tensor_hooks(model):
    """Tensor hooks left on parameters (``register_hook`` / post-accumulate-grad hooks)."""
    count = 0
    for p in model.parameters():
        count += len(p._backward_hooks or {})
        count += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return count


@pytest.fixture
def make_trainer(tmp_path):
    """``make_trainer(callbacks, **trainer_kwargs)``: a CPU Trainer without progress bar, model
    summary or checkpointing, logging to a new ``tmp_path/run/version_<n>`` on each call."""
    return lambda callbacks, **kwargs: _trainer(tmp_path, callbacks, **kwargs)


@pytest.fixture
def events():
    return _events


@pytest.fixture
def write_run():
    """``write_run(directory, {tag: [(step, value), ...]})``: one run's event file, written by
    TensorBoard's ``SummaryWriter``; returns the directory."""
    return _write_run


@pytest.fixture
def hooks():
    return _module_hooks


@pytest.fixture
def tensor_hooks():
    return _tensor_hooks
