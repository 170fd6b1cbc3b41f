"""Window sentinels: a gradient spike or a non-finite gradient between two logging steps shows at
the next one (``health/grad_norm_total_max``, ``health/nonfinite_grad_steps``), checked against
float64 norms of every step's gradients, with no host sync on the steps in between."""

import math

import pytest
import torch
from pytorch_lightning import LightningModule
from torch import nn
from torch.utils.data import DataLoader

import ln_diagnostics.collect.collector as collector_module
from ln_diagnostics import attach
from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import select_modules

MAX, BAD = "health/grad_norm_total_max", "health/nonfinite_grad_steps"


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def total_norm(params):
    """The total gradient norm from per-parameter float64 norms."""
    return math.sqrt(sum(p.grad.double().norm().item() ** 2 for p in params if p.grad is not None))


def train(model, steps, *, every=5, spike=None, nan=None, counter=None):
    """A plain loop: the loss of step ``spike`` scaled by 1e6; at step ``nan`` one gradient
    element NaN and the optimizer step skipped (as ``GradScaler`` skips a non-finite step)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    logged, norms, syncs = {}, {}, {}
    gen = torch.Generator().manual_seed(1)
    with attach(model, every_n_steps=every) as diag:
        for step in range(steps):
            before = len(counter.calls) if counter else 0
            loss = model(torch.randn(32, 8, generator=gen)).pow(2).mean()
            (loss * 1e6 if step == spike else loss).backward()
            if step == nan:
                with torch.no_grad():
                    model[2].weight.grad[0, 0] = math.nan
            norms[step] = total_norm(model.parameters())
            diag.before_optimizer_step()
            if step != nan:
                opt.step()
            opt.zero_grad()
            report = diag.step()
            if counter:
                syncs[step] = len(counter.calls) - before
            if report is not None:
                logged[step] = report.scalars
    return logged, norms, syncs


def test_a_spike_between_logging_steps_shows_at_the_next_one_and_only_there():
    logged, norms, _ = train(mlp(), 11, spike=7)
    assert sorted(logged) == [0, 5, 10]
    assert norms[7] > 1e4 * max(v for k, v in norms.items() if k != 7)
    assert logged[10][MAX] == pytest.approx(norms[7], rel=1e-5)
    assert logged[10]["health/grad_norm_total"] < norms[7] / 1e4  # the logging step misses it
    # each window: the steps after the previous logging step, up to this one
    assert logged[5][MAX] == pytest.approx(max(norms[k] for k in range(1, 6)), rel=1e-5)
    assert logged[0][MAX] == pytest.approx(logged[0]["health/grad_norm_total"], rel=1e-12)
    assert [logged[k][BAD] for k in (0, 5, 10)] == [0, 0, 0]


def test_a_non_finite_gradient_between_logging_steps_is_counted_once():
    logged, norms, _ = train(mlp(), 11, nan=3)
    assert math.isnan(norms[3])
    assert [logged[k][BAD] for k in (0, 5, 10)] == [0, 1, 0]
    assert math.isnan(logged[5][MAX])  # a NaN norm passes: it must reach the log
    assert logged[5]["health/nonfinite_grads"] == 0  # the logging step itself was finite
    assert logged[10][MAX] == pytest.approx(max(norms[k] for k in range(6, 11)), rel=1e-5)


def test_no_host_sync_on_the_steps_between_logging_steps(sync_counter):
    logged, norms, syncs = train(mlp(), 11, spike=7, counter=sync_counter())
    assert [n for step, n in syncs.items() if step % 5] == [0] * 8, syncs
    # steps 5 and 10 log (one packed copy); step 0 also runs the default shift probe's fit
    assert all(1 <= syncs[step] <= 2 for step in (5, 10)), syncs
    assert logged[10][MAX] == pytest.approx(norms[7], rel=1e-5)


def test_each_gradient_counts_once_with_several_optimizers_and_calls():
    model = mlp()
    first, second = list(model[:2].parameters()), list(model[2:].parameters())
    optimizers = [torch.optim.SGD(first, lr=1e-7), torch.optim.SGD(second, lr=1e-7)]
    collector = Collector(model, select_modules(model))
    norms = []
    for step in range(4):
        collector.begin_step(step, scalars=step % 3 == 0, histograms=False)
        model(torch.randn(16, 8)).pow(2).mean().backward()
        norms.append(total_norm(model.parameters()))
        for opt in optimizers:
            collector.before_optimizer_step(opt)
            collector.before_optimizer_step(opt)  # read already: not counted again
            opt.step()
        collector.before_optimizer_step()
        model.zero_grad()
        report = collector.end_step()
    assert report.step == 3
    assert report.scalars[MAX] == pytest.approx(max(norms[1:]), rel=1e-5)
    assert report.scalars["health/grad_norm_total"] == pytest.approx(norms[3], rel=1e-5)


def test_a_parameter_group_added_between_logging_steps_counts_from_the_next_step():
    """The sentinel keeps each optimizer's parameter indices between steps: a group added to
    the optimizer (as unfreezing a backbone does) must count from the next step on."""
    model = mlp()
    opt = torch.optim.SGD(model[:2].parameters(), lr=1e-7)
    collector = Collector(model, select_modules(model))
    counted, first_only = [], []
    for step in range(5):
        if step == 2:
            opt.add_param_group({"params": list(model[2:].parameters())})
        collector.begin_step(step, scalars=step in (0, 4), histograms=False)
        loss = model(torch.randn(16, 8)).pow(2).mean()
        (loss * (1e3 if step == 3 else 1.0)).backward()
        counted.append(total_norm([p for g in opt.param_groups for p in g["params"]]))
        first_only.append(total_norm(model[:2].parameters()))
        collector.before_optimizer_step(opt)
        model.zero_grad()
        report = collector.end_step()
    # step 3's loss is 1e3x: its norm is the maximum only if the added group counted
    assert report.scalars[MAX] == pytest.approx(max(counted[1:]), rel=1e-5)
    assert max(counted[1:]) > 1.1 * max(first_only[1:])


def test_a_failure_between_logging_steps_warns_once_and_leaves_that_window_out(monkeypatch):
    original = collector_module._sum_of_squares
    calls = []

    def failing(tensors, device):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original(tensors, device)

    monkeypatch.setattr(collector_module, "_sum_of_squares", failing)
    with pytest.warns(RuntimeWarning, match="total gradient norm between logging steps failed"):
        logged, norms, _ = train(mlp(), 11)
    assert MAX not in logged[5] and BAD not in logged[5]
    assert "health/grad_norm_total" in logged[5]
    assert logged[10][MAX] == pytest.approx(max(norms[k] for k in range(6, 11)), rel=1e-5)


class Spiky(LightningModule):
    """A small regression model whose loss is 1e6 times larger at step 7."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.norms = {}

    def training_step(self, batch, batch_idx):
        loss = self.net(batch).pow(2).mean()
        return loss * 1e6 if self.global_step == 7 else loss

    def on_before_optimizer_step(self, optimizer):
        self.norms[self.global_step] = total_norm(self.parameters())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-7)

    def train_dataloader(self):
        return DataLoader(torch.randn(11 * 16, 8, generator=torch.Generator().manual_seed(2)), 16)


def test_trainer_fit_with_default_options_writes_the_window_sentinels(make_trainer, events):
    model = Spiky()
    trainer = make_trainer([LayerDiagnostics()], max_steps=11, log_every_n_steps=5)
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    maxima = {e.step: e.value for e in acc.Scalars(MAX)}
    assert sorted(maxima) == [0, 5, 10]
    assert maxima[10] == pytest.approx(model.norms[7], rel=1e-5)
    assert maxima[5] == pytest.approx(max(model.norms[k] for k in range(1, 6)), rel=1e-5)
    assert [e.value for e in acc.Scalars(BAD)] == [0, 0, 0]
