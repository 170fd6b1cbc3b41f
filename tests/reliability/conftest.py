"""Shared helpers of the reliability tests: a quiet CPU Trainer, event-file reading, hook counts."""

import pytest
import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset


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


def _regression_data(n=64, features=16, batch_size=8, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen) * scale
    y = torch.randn(n, 1, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class GradNorms(Callback):
    """Independent float64 gradient norms of a few submodules, read in ``on_before_optimizer_step``
    (Lightning calls it after AMP unscaling and before gradient clipping). The first call of a
    ``global_step`` is kept in ``norms``; every call is appended to ``calls``."""

    def __init__(self, *names):
        self.names = names
        self.norms = {}
        self.calls = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        row = {}
        for name in self.names:
            grads = [p.grad for p in pl_module.get_submodule(name).parameters()]
            if all(g is not None for g in grads):
                row[name] = torch.cat([g.double().reshape(-1) for g in grads]).norm().item()
        self.calls.append((trainer.global_step, row))
        self.norms.setdefault(trainer.global_step, row)


@pytest.fixture
def make_trainer(tmp_path):
    return lambda callbacks, **kwargs: _trainer(tmp_path, callbacks, **kwargs)


@pytest.fixture
def events():
    return _events


@pytest.fixture
def hooks():
    return _module_hooks


@pytest.fixture
def tensor_hooks():
    return _tensor_hooks


@pytest.fixture
def regression_data():
    return _regression_data


@pytest.fixture
def grad_norms():
    return GradNorms


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one intra-op thread, and a busy shared machine makes a second
    OpenMP thread spin (measured: 40 ms instead of 0.1 ms per BatchNorm call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
