"""Faults: a failing hook disables one layer and training goes on; KeyboardInterrupt flushes and
cleans up; nothing of ours outlives ``fit``; memory stays flat over a long run."""

import gc
import resource
import signal
import warnings
import weakref

import pytest
import torch
from pytorch_lightning import Callback, LightningModule, seed_everything
from torch import nn

from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics, NormSwap

QUIET = {"histogram_every_n_steps": 0, "shift_every_n_steps": 0}


class ToSparse(nn.Module):
    """Returns a sparse COO tensor (a realistic output our power sums cannot reshape)."""

    def forward(self, x):
        return x.to_sparse()


class SparseMiddle(LightningModule):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(16, 8)
        self.sparse = ToSparse()
        self.last = nn.Linear(8, 1)

    def forward(self, x):
        return self.last(self.sparse(torch.relu(self.first(x))).to_dense())

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_layer_whose_statistics_fail_warns_once_and_is_dropped_while_training_goes_on(
    make_trainer, events, regression_data, hooks
):
    seed_everything(0)
    model = SparseMiddle()
    diag = LayerDiagnostics(every_n_steps=1, types=[nn.Linear, ToSparse], **QUIET)
    run = make_trainer([diag], max_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.fit(model, train_dataloaders=regression_data())
    ours = [str(w.message) for w in caught if "ln-diagnostics" in str(w.message)]
    assert len(ours) == 1
    assert "layer 'sparse' failed" in ours[0] and "training goes on" in ours[0]
    assert run.global_step == 4 and diag.n_logged == 4
    acc = events(run.logger.log_dir)
    tags = acc.Tags()["scalars"]
    assert not [t for t in tags if t.endswith("/sparse")]
    for layer in ("first", "last"):
        assert [e.step for e in acc.Scalars(f"activations/std/{layer}")] == [0, 1, 2, 3]
    assert hooks(model) == 0


def test_a_hook_failing_mid_run_keeps_earlier_values_of_that_layer(
    make_trainer, events, regression_data, monkeypatch
):
    import ln_diagnostics.collect.collector as collector_module

    real = collector_module.power_sums
    calls = {"n": 0}

    def flaky(x, *args, **kwargs):  # fails on the 3rd logging step, for the (N, 1) output only
        if x.shape[-1] == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected failure")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(collector_module, "power_sums", flaky)
    seed_everything(0)
    run = make_trainer([LayerDiagnostics(every_n_steps=1, **QUIET)], max_steps=5)
    with pytest.warns(
        RuntimeWarning, match=r"layer 'last' failed \(RuntimeError: injected failure\)"
    ):
        run.fit(SparseMiddle(), train_dataloaders=regression_data())
    acc = events(run.logger.log_dir)
    assert [e.step for e in acc.Scalars("activations/std/last")] == [0, 1]
    assert [e.step for e in acc.Scalars("activations/std/first")] == [0, 1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("gradients/norm/last")] == [0, 1, 2, 3, 4]


class Interruptible(LightningModule):
    """``interrupt_at``: raise KeyboardInterrupt when ``global_step`` reaches it, in ``where``."""

    def __init__(self, interrupt_at=None, where="on_train_batch_start"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1)
        )
        self.interrupt_at, self.where = interrupt_at, where

    def forward(self, x):
        return self.net(x)

    def on_train_batch_start(self, batch, batch_idx):
        if self.where == "on_train_batch_start" and self.global_step == self.interrupt_at:
            raise KeyboardInterrupt

    def training_step(self, batch, batch_idx):
        # The ICS probe re-runs training_step after the optimizer step, when global_step has
        # already advanced: raising there interrupts the probe of the previous step.
        if self.where == "training_step" and self.global_step == self.interrupt_at:
            raise KeyboardInterrupt
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize(
    ("where", "ics_steps"),
    [("on_train_batch_start", [0, 2]), ("training_step", [0])],
    ids=["between-steps", "during-the-ics-probe-of-step-2"],
)
def test_keyboard_interrupt_flushes_the_event_file_and_removes_every_hook(
    make_trainer, events, regression_data, hooks, tensor_hooks, where, ics_steps
):
    seed_everything(0)
    model = Interruptible(interrupt_at=3, where=where)
    diag = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=2, ics_every_n_steps=2)
    run = make_trainer([diag], max_steps=10)
    handler = signal.getsignal(signal.SIGINT)
    try:
        # Lightning catches the interrupt, runs on_exception and teardown, then exits with 1.
        with pytest.raises(SystemExit) as exit_info:
            run.fit(model, train_dataloaders=regression_data())
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exit_info.value.code == 1
    assert run.interrupted
    assert hooks(model) == 0 and tensor_hooks(model) == 0
    acc = events(run.logger.log_dir)
    assert [e.step for e in acc.Scalars("gradients/norm/net.0")] == [0, 1, 2]
    assert [e.step for e in acc.Histograms("activations/hist/net.0")] == [0, 2]
    assert [e.step for e in acc.Scalars("ics/cos/net.4")] == ics_steps


def test_after_fit_with_every_feature_on_nothing_of_ours_keeps_the_model_alive(
    make_trainer, regression_data, hooks, tensor_hooks
):
    seed_everything(0)
    model = Interruptible()
    callbacks = [
        NormSwap(target="layernorm"),
        LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=2, ics_every_n_steps=2),
        LayerDiagnostics(every_n_steps=2, group_depth=1, include="net.*"),
        DiagnosticThresholds([{"tag": "health/*", "max": 1e9, "over": "max"}]),
    ]
    run = make_trainer(callbacks, max_steps=4)
    run.fit(model, train_dataloaders=regression_data())
    assert hooks(model) == 0 and tensor_hooks(model) == 0
    for module in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert not getattr(module, name), (module, name)
    for p in model.parameters():
        assert not p._backward_hooks
    ref = weakref.ref(model)
    del model, callbacks, run  # Lightning binds pl_module.log onto every callback
    gc.collect()
    assert ref() is None


def live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on torch's deprecated module proxies warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class MemoryProbe(Callback):
    def __init__(self, at):
        self.at = at
        self.tensors = {}
        self.rss = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.at:
            self.tensors[trainer.global_step] = live_tensors()
            self.rss[trainer.global_step] = peak_rss_mib()


def test_memory_is_flat_over_a_long_run_logging_every_step(make_trainer, regression_data):
    seed_everything(0)
    probe = MemoryProbe(at=(100, 300))
    diag = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=5, shift_every_n_steps=3)
    run = make_trainer([diag, probe], max_steps=300, log_every_n_steps=1)
    run.fit(Interruptible(), train_dataloaders=regression_data(n=64, batch_size=16))
    assert diag.n_logged == 300
    assert probe.tensors[300] - probe.tensors[100] <= 5, probe.tensors
    assert probe.rss[300] - probe.rss[100] < 32, probe.rss
