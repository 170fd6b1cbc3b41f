"""``torch.compile``: hooks on the submodules of a compiled module still fire and measure the
same values; the callback leaves no hooks behind."""

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics

QUIET = {"histogram_every_n_steps": 0, "shift_every_n_steps": 0}


def make_net():
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))


class CompiledInner(LightningModule):
    """``self.net = torch.compile(net)``: submodules are named ``net._orig_mod.<i>``; their tags
    drop the wrapper segment (``net.<i>``), as in an eager run."""

    def __init__(self, backend):
        super().__init__()
        self.net = torch.compile(make_net(), backend=backend)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Plain(CompiledInner):
    def __init__(self):
        LightningModule.__init__(self)
        self.net = make_net()

    def forward(self, x):
        return self.net(x)


def compiled_inner_run(make_trainer, events, regression_data, grad_norms, backend):
    seed_everything(0)
    model = CompiledInner(backend)
    probe = grad_norms("net._orig_mod.0", "net._orig_mod.2")
    run = make_trainer([LayerDiagnostics(every_n_steps=2, **QUIET), probe], max_steps=5)
    torch._dynamo.reset()
    run.fit(model, train_dataloaders=regression_data())
    return model, run, probe


def check_compiled_run(model, run, probe, events, hooks, tensor_hooks):
    acc = events(run.logger.log_dir)
    tags = acc.Tags()["scalars"]
    for layer in ("net.0", "net.1", "net.2"):
        assert f"activations/std/{layer}" in tags
        assert f"backprop/norm/{layer}" in tags
    for index in (0, 2):
        logged = acc.Scalars(f"gradients/norm/net.{index}")
        assert [e.step for e in logged] == [0, 2, 4]
        for event in logged:
            want = probe.norms[event.step][f"net._orig_mod.{index}"]
            assert event.value == pytest.approx(want, rel=1e-5)
    assert hooks(model) == 0 and tensor_hooks(model) == 0


def test_compiled_inner_module_aot_eager(
    make_trainer, events, regression_data, grad_norms, hooks, tensor_hooks
):
    model, run, probe = compiled_inner_run(
        make_trainer, events, regression_data, grad_norms, "aot_eager"
    )
    check_compiled_run(model, run, probe, events, hooks, tensor_hooks)


@pytest.mark.slow
def test_compiled_inner_module_inductor(
    make_trainer, events, regression_data, grad_norms, hooks, tensor_hooks
):
    model, run, probe = compiled_inner_run(
        make_trainer, events, regression_data, grad_norms, "inductor"
    )
    check_compiled_run(model, run, probe, events, hooks, tensor_hooks)


def test_compiled_lightning_module_is_unwrapped_by_the_trainer(
    make_trainer, events, regression_data, grad_norms, hooks
):
    seed_everything(0)
    model = Plain()
    probe = grad_norms("net.0")
    run = make_trainer([LayerDiagnostics(every_n_steps=2, **QUIET), probe], max_steps=3)
    torch._dynamo.reset()
    run.fit(torch.compile(model, backend="aot_eager"), train_dataloaders=regression_data())
    logged = events(run.logger.log_dir).Scalars("gradients/norm/net.0")
    assert [e.step for e in logged] == [0, 2]
    for event in logged:
        assert event.value == pytest.approx(probe.norms[event.step]["net.0"], rel=1e-5)
    assert hooks(model) == 0


def test_compiled_and_eager_runs_log_the_same_tags(make_trainer, events, regression_data):
    seed_everything(0)
    run = make_trainer([LayerDiagnostics(every_n_steps=1, **QUIET)], max_steps=1)
    torch._dynamo.reset()
    run.fit(CompiledInner("aot_eager"), train_dataloaders=regression_data())
    assert "gradients/norm/net.0" in events(run.logger.log_dir).Tags()["scalars"]


class DeepCompiled(CompiledInner):
    def __init__(self, depth=12):
        LightningModule.__init__(self)
        layers = [m for _ in range(depth) for m in (nn.Linear(16, 16), nn.Tanh())]
        self.net = torch.compile(nn.Sequential(*layers, nn.Linear(16, 1)), backend="aot_eager")


def test_hooks_on_a_deep_compiled_model_stay_within_the_recompile_limit(
    make_trainer, regression_data
):
    from torch._dynamo.utils import counters

    seed_everything(0)
    torch._dynamo.reset()
    counters.clear()
    diag = LayerDiagnostics(every_n_steps=2, **QUIET)
    run = make_trainer([diag], max_steps=6)
    run.fit(DeepCompiled(), train_dataloaders=regression_data())
    assert len([t for t in diag.last_logged.scalars if t.startswith("activations/std/")]) == 25
    assert not [k for k in counters["unimplemented"] if "recompile limit" in k.lower()]
    assert counters["stats"]["unique_graphs"] <= 6
