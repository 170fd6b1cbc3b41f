"""Gradient accumulation, manual optimization (one and two optimizers), gradient clipping,
``max_steps`` between logging steps, and validation/test loops."""

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics
from tests.reliability.conftest import MLP

QUIET = {"histogram_every_n_steps": 0, "shift_every_n_steps": 0}


class Evaluated(MLP):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.loss(batch))


def capture(module, store):
    """Record training-mode outputs of ``module`` (float64 copies); the hook returns None."""

    def hook(mod, args, output):
        if mod.training and torch.is_grad_enabled():
            store.append(output.detach().double().clone())

    return module.register_forward_hook(hook)


def test_accumulation_pools_activations_over_all_micro_batches(
    make_trainer, events, regression_data
):
    seed_everything(0)
    model = MLP()
    outputs = []
    handle = capture(model.net[0], outputs)
    diag = LayerDiagnostics(every_n_steps=2, **QUIET)
    run = make_trainer([diag], max_steps=4, accumulate_grad_batches=3)
    run.fit(model, train_dataloaders=regression_data(n=96))
    handle.remove()
    assert len(outputs) == 12
    acc = events(run.logger.log_dir)
    means = acc.Scalars("activations/mean/net.0")
    stds = acc.Scalars("activations/std/net.0")
    assert [e.step for e in means] == [0, 2]
    for event_mean, event_std in zip(means, stds, strict=True):
        pooled = torch.cat(outputs[3 * event_mean.step : 3 * event_mean.step + 3])
        assert event_mean.value == pytest.approx(pooled.mean().item(), rel=1e-5, abs=1e-6)
        assert event_std.value == pytest.approx(pooled.std(unbiased=False).item(), rel=1e-5)


class Manual(MLP):
    """Manual optimization; with ``every`` > 1 it accumulates gradients by hand."""

    def __init__(self, every=1):
        super().__init__()
        self.automatic_optimization = False
        self.every = every

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) / self.every
        self.manual_backward(loss)
        if (batch_idx + 1) % self.every == 0:
            opt.step()
            opt.zero_grad()
        return loss


@pytest.mark.parametrize("every", [1, 2], ids=["step-every-batch", "manual-accumulation"])
def test_manual_optimization_logs_the_gradients_the_optimizer_steps_with(
    make_trainer, events, regression_data, grad_norms, every
):
    seed_everything(0)
    probe = grad_norms("net.0", "net.2")
    model = Manual(every)
    run = make_trainer([LayerDiagnostics(every_n_steps=1, **QUIET), probe], max_steps=3)
    run.fit(model, train_dataloaders=regression_data())
    assert run.global_step == 3
    acc = events(run.logger.log_dir)
    for layer in ("net.0", "net.2"):
        logged = acc.Scalars(f"gradients/norm/{layer}")
        assert [e.step for e in logged] == [0, 1, 2]
        for event in logged:
            assert event.value == pytest.approx(probe.norms[event.step][layer], rel=1e-5)
    assert len(acc.Scalars("updates/ratio/net.0")) == 3


class TwoOptimizers(LightningModule):
    """GAN-like: ``gen`` steps on loss 1 (which also reaches ``disc``), then ``disc`` on loss 2."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.gen = nn.Linear(16, 16)
        self.disc = nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_gen, opt_disc = self.optimizers()
        loss_gen = self.disc(torch.tanh(self.gen(x))).pow(2).mean()
        opt_gen.zero_grad()
        self.manual_backward(loss_gen)
        opt_gen.step()
        loss_disc = nn.functional.mse_loss(self.disc(x), y)
        opt_disc.zero_grad()
        self.manual_backward(loss_disc)
        opt_disc.step()
        self.log("batch_global_step", float(self.global_step))

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.gen.parameters(), lr=0.1),
            torch.optim.SGD(self.disc.parameters(), lr=0.1),
        )


def two_optimizer_run(make_trainer, regression_data, grad_norms):
    seed_everything(0)
    probe = grad_norms("gen", "disc")
    diag = LayerDiagnostics(every_n_steps=1, **QUIET)
    run = make_trainer([diag, probe], max_steps=6, log_every_n_steps=1)
    run.fit(TwoOptimizers(), train_dataloaders=regression_data())
    return run, diag, probe


def test_two_optimizers_per_batch_log_once_per_batch_at_lightnings_global_step(
    make_trainer, events, regression_data, grad_norms
):
    run, diag, probe = two_optimizer_run(make_trainer, regression_data, grad_norms)
    # Lightning counts optimizer steps: two per batch, so global_step runs 0, 2, 4, 6.
    assert run.global_step == 6
    assert [step for step, _ in probe.calls] == [0, 1, 2, 3, 4, 5]
    acc = events(run.logger.log_dir)
    # One report per batch, tagged with global_step at the batch start ...
    assert [e.step for e in acc.Scalars("gradients/norm/gen")] == [0, 2, 4]
    assert diag.n_logged == 3
    # ... while Lightning's own self.log metrics use the count of batches that stepped.
    assert [e.step for e in acc.Scalars("batch_global_step")] == [0, 1, 2]
    for event in acc.Scalars("gradients/norm/gen"):
        assert event.value == pytest.approx(probe.norms[event.step]["gen"], rel=1e-5)
    # Which gradient of the discriminator is logged: see the test below.
    # The update ratio spans the whole batch: both optimizers' updates.
    assert all(e.value > 0 for e in acc.Scalars("updates/ratio/disc"))


def test_two_optimizers_log_each_parameters_gradient_at_its_own_optimizer_step(
    make_trainer, events, regression_data, grad_norms
):
    run, _, probe = two_optimizer_run(make_trainer, regression_data, grad_norms)
    by_call = dict(probe.calls[1::2])  # the discriminator optimizer's step: global_step 1, 3, 5
    for event in events(run.logger.log_dir).Scalars("gradients/norm/disc"):
        assert event.value == pytest.approx(by_call[event.step + 1]["disc"], rel=1e-5)


class ClipRecorder(MLP):
    """Records the total gradient norm right after Lightning clipped it."""

    def __init__(self):
        super().__init__()
        self.clipped = {}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad.double().reshape(-1) for p in self.net[0].parameters()]
        self.clipped[self.global_step] = torch.cat(grads).norm().item()


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_logged_gradient_norms_are_taken_before_clipping(
    make_trainer, events, regression_data, grad_norms, algorithm
):
    seed_everything(0)
    clip = 1e-3
    probe = grad_norms("net.0")
    model = ClipRecorder()
    run = make_trainer(
        [LayerDiagnostics(every_n_steps=1, **QUIET), probe],
        max_steps=3,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )
    run.fit(model, train_dataloaders=regression_data())
    logged = events(run.logger.log_dir).Scalars("gradients/norm/net.0")
    assert [e.step for e in logged] == [0, 1, 2]
    for event in logged:
        unclipped = probe.norms[event.step]["net.0"]
        assert event.value == pytest.approx(unclipped, rel=1e-5)
        assert model.clipped[event.step] < unclipped / 10  # clipping really changed the gradient


def test_max_steps_between_logging_steps_loses_nothing_and_removes_hooks(
    make_trainer, events, regression_data, hooks, tensor_hooks
):
    seed_everything(0)
    model = MLP()
    diag = LayerDiagnostics(every_n_steps=3, histogram_every_n_steps=6)
    run = make_trainer([diag], max_steps=8)  # steps 0..7: the last logging step is 6
    run.fit(model, train_dataloaders=regression_data())
    acc = events(run.logger.log_dir)
    tags = acc.Tags()["scalars"]
    ours = [t for t in tags if t.split("/")[0] in ("activations", "gradients", "health", "shift")]
    assert ours
    for tag in ours:
        # the default shift probe runs at step 0 and then every 102 steps (10x, >= 100)
        probe = tag.startswith(("shift/", "health/shift_"))
        assert [e.step for e in acc.Scalars(tag)] == ([0] if probe else [0, 3, 6]), tag
    assert [e.step for e in acc.Histograms("activations/hist/net.0")] == [0, 6]
    assert diag.n_logged == 3 and diag.last_logged.step == 6
    assert hooks(model) == 0 and tensor_hooks(model) == 0


def test_validation_and_test_loops_are_not_collected_and_add_no_hooks(
    make_trainer, events, regression_data, hooks
):
    seed_everything(0)
    model = Evaluated()
    train_out = []
    handle = capture(model.net[0], train_out)
    diag = LayerDiagnostics(every_n_steps=1, **QUIET)
    val = regression_data(n=16, seed=1, scale=1000.0)  # far larger activations than training
    run = make_trainer([diag], max_steps=4, val_check_interval=2, limit_val_batches=2)
    run.fit(model, train_dataloaders=regression_data(), val_dataloaders=val)
    handle.remove()
    acc = events(run.logger.log_dir)
    absmax = acc.Scalars("activations/absmax/net.0")
    assert [e.step for e in absmax] == [0, 1, 2, 3]
    for event, out in zip(absmax, train_out, strict=True):
        assert event.value == pytest.approx(out.abs().max().item(), rel=1e-6)
    assert "val_loss" in acc.Tags()["scalars"]

    seen = []

    def count_hooks(mod, args, output):
        seen.append(hooks(model) - 1)  # minus this very hook

    handle = model.net[2].register_forward_hook(count_hooks)
    run.validate(model, dataloaders=val)
    run.test(model, dataloaders=val)
    handle.remove()
    assert seen and set(seen) == {0}
    assert hooks(model) == 0
    after = events(run.logger.log_dir)
    assert [e.step for e in after.Scalars("activations/absmax/net.0")] == [0, 1, 2, 3]
    assert "test_loss" in after.Tags()["scalars"]
