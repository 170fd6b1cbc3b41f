"""Helpers of the reliability tests: regression data, independent gradient norms, one thread.
The Trainer builder, event reader and hook counters are in ``tests/conftest.py``."""

import pytest
import torch
from pytorch_lightning import Callback
from torch.utils.data import DataLoader, TensorDataset


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
