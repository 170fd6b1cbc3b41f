"""Helpers of the reliability tests: the test MLP, regression data, independent gradient norms,
one thread. The Trainer builder, event reader and hook counters are in ``tests/conftest.py``.

The test modules import :class:`MLP` (``from tests.reliability.conftest import MLP``) because
several subclass it; pytest has already loaded this module under that name."""

import pytest
import torch
from pytorch_lightning import Callback, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MLP(LightningModule):
    """``Linear(16, hidden) -> Tanh -> Linear(hidden, 1)`` (``net.0``, ``net.1``, ``net.2``),
    trained on the mean squared error of :func:`regression_data` with SGD."""

    def __init__(self, hidden=32, lr=0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        # a no-op in float32; under bf16 autocast the loss is taken on float32 outputs
        return nn.functional.mse_loss(self(x).float(), y)

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


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
