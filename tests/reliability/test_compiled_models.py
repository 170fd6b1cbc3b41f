"""``torch.compile``: hooks on the submodules of a compiled module still fire and measure the
same values; the callback leaves no hooks behind."""

import pytest
import torch
from pytorch_lightning import seed_everything
from torch import nn

from ln_diagnostics import attach
from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.collector import Collector, select_modules
from tests.reliability.conftest import MLP

QUIET = {"histogram_every_n_steps": 0, "shift_every_n_steps": 0}


class CompiledInner(MLP):
    """``self.net = torch.compile(net)``: submodules are named ``net._orig_mod.<i>``; their tags
    drop the wrapper segment (``net.<i>``), as in an eager run."""

    def __init__(self, backend):
        super().__init__()
        self.net = torch.compile(self.net, backend=backend)


def compiled_inner_run(make_trainer, regression_data, grad_norms, backend):
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
    model, run, probe = compiled_inner_run(make_trainer, regression_data, grad_norms, "aot_eager")
    check_compiled_run(model, run, probe, events, hooks, tensor_hooks)


@pytest.mark.slow
def test_compiled_inner_module_inductor(
    make_trainer, events, regression_data, grad_norms, hooks, tensor_hooks
):
    model, run, probe = compiled_inner_run(make_trainer, regression_data, grad_norms, "inductor")
    check_compiled_run(model, run, probe, events, hooks, tensor_hooks)


def test_compiled_lightning_module_is_unwrapped_by_the_trainer(
    make_trainer, events, regression_data, grad_norms, hooks
):
    seed_everything(0)
    model = MLP()
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
    tags = {}
    for name, make in (("compiled", lambda: CompiledInner("aot_eager")), ("eager", MLP)):
        seed_everything(0)
        run = make_trainer([LayerDiagnostics(every_n_steps=1, **QUIET)], max_steps=1)
        torch._dynamo.reset()
        run.fit(make(), train_dataloaders=regression_data())
        tags[name] = set(events(run.logger.log_dir).Tags()["scalars"])
    assert tags["compiled"] == tags["eager"]
    assert "gradients/norm/net.0" in tags["eager"]


class DeepCompiled(MLP):
    def __init__(self, depth=12):
        super().__init__()
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


def test_a_model_compiled_after_attach_keeps_its_hooks_through_recompiles():
    """``attach()`` sees the eager model only. Once Dynamo has compiled a graph the forward hooks
    stay registered between logging steps: a graph traced without them (here recompiled for a new
    batch size on a non-logging step) would never call them on later logging steps."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = MLP().net
    diag = attach(model, every_n_steps=2)
    compiled = torch.compile(model, backend="aot_eager")
    logged = {}
    for batch in (8, 5, 5, 5, 5):
        compiled(torch.randn(batch, 16)).pow(2).mean().backward()
        diag.before_optimizer_step()
        report = diag.step()
        if report is not None:
            logged[report.step] = sorted(t for t in report.scalars if "activations/std/" in t)
    diag.detach()
    layers = [f"activations/std/{i}" for i in range(3)]
    assert logged == {0: layers, 2: layers, 4: layers}
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_a_compiled_part_keeps_the_hooks_registered_when_the_first_step_does_not_log():
    """A run resumed at a non-logging step compiles its first graph there: the hooks must
    already be registered, or the graph never calls them on the logging steps after it."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = nn.Sequential(torch.compile(MLP().net, backend="aot_eager"))
    collector = Collector(model, select_modules(model))
    collector.attach()
    rows = []
    for step in (7, 8, 9, 10):
        collector.begin_step(step, scalars=step % 2 == 0, histograms=False)
        model(torch.randn(8, 16)).pow(2).mean().backward()
        collector.before_optimizer_step()
        report = collector.end_step()
        if report is not None:
            rows.append(len([t for t in report.scalars if "activations/std/" in t]))
    collector.detach()
    assert rows == [3, 3]
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
