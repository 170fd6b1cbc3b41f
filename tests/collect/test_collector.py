"""The collector on tiny models: numbers against independent computations, hooks, syncs."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ln_diagnostics import attach
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import select_modules


def run_step(collector, model, x, step=0, *, log=True, hist=False, lr=0.1):
    collector.begin_step(step, scalars=log, histograms=hist)
    model.zero_grad()
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.pow(2).mean().backward()
    collector.before_optimizer_step()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return collector.end_step()


def hooks_on(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def mlp(depth=3, width=8):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def test_default_selection_picks_leaves_with_parameters_norms_and_activations():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(),
        nn.Flatten(),
        nn.Sequential(nn.LazyLinear(2)),
    )
    names = [name for name, _ in select_modules(model)]
    assert names == ["0", "1", "2", "5.0"]
    assert [n for n, _ in select_modules(model, include=["5*"])] == ["5.0"]
    assert [n for n, _ in select_modules(model, exclude=["1", "2"])] == ["0", "5.0"]
    assert [n for n, _ in select_modules(model, types=(nn.Dropout,))] == ["3"]


def test_saturation_is_measured_for_activations_bounded_in_minus_one_one_only():
    from ln_diagnostics.collect.selection import saturation_kind

    kinds = [
        saturation_kind(m)
        for m in (nn.Tanh(), nn.Hardtanh(), nn.Softsign(), nn.Sigmoid(), nn.Hardsigmoid())
    ]
    assert kinds == ["tanh", "tanh", "tanh", "sigmoid", "sigmoid"]
    # ReLU6 is a Hardtanh(0, 6): |y| > 0.97 would count most of its positive outputs
    assert saturation_kind(nn.ReLU6()) is None
    assert saturation_kind(nn.Hardtanh(-2.0, 2.0)) is None
    assert saturation_kind(nn.ReLU()) is None


def test_activation_statistics_are_those_of_the_logging_step_batch():
    torch.manual_seed(0)
    model = mlp()
    collector = Collector(model, select_modules(model))
    collector.attach()
    xs = [torch.randn(32, 8) for _ in range(3)]
    assert run_step(collector, model, xs[0], 0, log=False) is None
    captured = {}
    model[1].register_forward_hook(lambda m, a, out: captured.update(y=out.detach()))
    report = run_step(collector, model, xs[1], 1)
    y = captured["y"].double().numpy()
    s = report.scalars
    assert s["activations/mean/1"] == pytest.approx(y.mean(), abs=1e-6)
    assert s["activations/std/1"] == pytest.approx(y.std(), rel=1e-5)
    assert s["activations/rms/1"] == pytest.approx(np.sqrt((y**2).mean()), rel=1e-5)
    assert s["activations/absmax/1"] == pytest.approx(np.abs(y).max(), rel=1e-6)
    assert s["activations/saturated_frac/1"] == pytest.approx((np.abs(y) > 0.97).mean())
    assert "activations/saturated_frac/0" not in s  # only for bounded activations
    assert report.step == 1


def test_gradient_parameter_and_update_norms_match_independent_computation():
    torch.manual_seed(1)
    model = mlp()
    collector = Collector(model, select_modules(model))
    collector.attach()
    x = torch.randn(16, 8)
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    grads = {}

    def keep_grads():
        grads.update({n: p.grad.double().clone() for n, p in model.named_parameters()})

    collector.begin_step(0, scalars=True, histograms=False)
    model(x).pow(2).mean().backward()
    keep_grads()
    collector.before_optimizer_step()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    report = collector.end_step()
    s = report.scalars

    def norm(tensors):
        return math.sqrt(sum(float((t.detach() ** 2).sum()) for t in tensors))

    layer = ["2.weight", "2.bias"]
    assert s["gradients/norm/2"] == pytest.approx(norm(grads[n] for n in layer), rel=1e-5)
    assert s["parameters/norm/2"] == pytest.approx(norm(before[n] for n in layer), rel=1e-5)
    delta = [before[n] - dict(model.named_parameters())[n].double() for n in layer]
    assert s["updates/ratio/2"] == pytest.approx(
        norm(delta) / norm(before[n] for n in layer), rel=1e-4
    )
    assert s["gradients/ratio/2"] == pytest.approx(s["gradients/norm/2"] / s["parameters/norm/2"])
    assert s["health/grad_norm_total"] == pytest.approx(norm(grads.values()), rel=1e-5)
    assert s["health/nonfinite_grads"] == 0


def test_backprop_norm_is_the_norm_of_the_gradient_wrt_the_module_output():
    torch.manual_seed(2)
    model = mlp(depth=4)
    collector = Collector(model, select_modules(model))
    collector.attach()
    outputs = {}
    for i in (0, 1, 6, 7):
        model[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
    collector.begin_step(0, scalars=True, histograms=False)
    x = torch.randn(16, 8)
    loss = model(x).pow(2).mean()
    for out in outputs.values():
        out.retain_grad()
    loss.backward()
    g0, g6 = outputs[0].grad, outputs[6].grad
    collector.before_optimizer_step()
    s = collector.end_step().scalars
    assert s["backprop/norm/0"] == pytest.approx(g0.double().norm().item(), rel=1e-5)
    assert s["backprop/norm/6"] == pytest.approx(g6.double().norm().item(), rel=1e-5)
    # depth over the hidden stack: between the input projection (0) and the head (8)
    first, last = outputs[1].grad.double().norm(), outputs[7].grad.double().norm()
    assert s["health/backprop_depth_log10"] == pytest.approx(math.log10(first / last), rel=1e-5)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.skipped = nn.Linear(4, 4)

    def forward(self, x):
        return self.block(torch.relu(self.block(x)))


def test_shared_module_called_twice_counts_both_calls_and_idle_module_is_skipped():
    torch.manual_seed(3)
    model = Shared()
    collector = Collector(model, select_modules(model))
    collector.attach()
    calls = []
    model.block.register_forward_hook(lambda m, a, out: calls.append(out.detach()))
    report = run_step(collector, model, torch.randn(10, 4))
    both = torch.cat(calls).double()
    s = report.scalars
    assert s["activations/mean/block"] == pytest.approx(both.mean().item(), abs=1e-6)
    assert s["activations/std/block"] == pytest.approx(both.std(unbiased=False).item(), rel=1e-5)
    assert not any(tag.startswith("activations/") and tag.endswith("/skipped") for tag in s)
    assert "gradients/norm/skipped" not in s  # no gradient reached it
    assert "parameters/norm/skipped" in s


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        out, (h, _) = self.lstm(x)
        return {"logits": self.head(out), "state": h}


def test_tuple_and_dict_outputs_use_their_first_floating_tensor():
    torch.manual_seed(4)
    model = DictOut()
    collector = Collector(model, select_modules(model))
    collector.attach()
    seen = {}
    model.lstm.register_forward_hook(lambda m, a, out: seen.update(out=out[0].detach()))
    collector.begin_step(0, scalars=True, histograms=True)
    model(torch.randn(4, 6, 3))["logits"].sum().backward()
    collector.before_optimizer_step()
    report = collector.end_step()
    assert report.scalars["activations/mean/lstm"] == pytest.approx(
        seen["out"].mean().item(), abs=1e-6
    )
    assert "backprop/norm/lstm" in report.scalars
    hist = report.histograms["activations/hist/lstm"]
    assert hist.num == seen["out"].numel()
    assert sum(hist.bucket) == hist.num
    assert "gradients/hist/head" in report.histograms


def test_hooks_are_removed_and_model_pickles_after_detach():
    model = mlp()
    with attach(model, every_n_steps=1) as diag:
        assert hooks_on(model) == len(diag.collector.modules)
        model(torch.randn(2, 8)).sum().backward()
        diag.before_optimizer_step()
        diag.step()
    assert hooks_on(model) == 0
    pickle.loads(pickle.dumps(model))


def test_forward_hooks_are_registered_for_logging_steps_only():
    model = mlp()
    seen = []  # hooks on the model at each forward, read by a pre-hook of the first layer
    model[0].register_forward_pre_hook(lambda module, args: seen.append(hooks_on(model)))
    logged = []
    with attach(model, every_n_steps=3) as diag:
        for _ in range(7):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            diag.before_optimizer_step()
            report = diag.step()
            if report is not None:
                logged.append(len([t for t in report.scalars if "activations/std/" in t]))
    n = len(diag.collector.modules)
    # step 0 begins with the default shift probe's forward pass (our paused hooks and the
    # probe's own on the same n modules), then the training forward pass
    assert seen == [2 * n, n, 0, 0, n, 0, 0, n]
    assert logged == [n, n, n]
    assert hooks_on(model) == 0


class WithEmptyParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.empty = nn.Parameter(torch.zeros(0))

    def forward(self, x):
        return x @ self.w + self.empty.sum()


def test_a_zero_size_parameter_does_not_break_a_histogram_step():
    torch.manual_seed(0)
    model = nn.Sequential(WithEmptyParameter(), nn.Tanh(), nn.Linear(4, 1))
    collector = Collector(model, select_modules(model))
    collector.attach()
    x = torch.randn(8, 4)
    out = (x @ model[0].w.detach()).double()  # the first layer's output, before the update
    report = run_step(collector, model, x, hist=True)
    collector.detach()
    act, grad = report.histograms["activations/hist/0"], report.histograms["gradients/hist/0"]
    assert (act.num, grad.num) == (32, 16)  # the empty parameter adds no value
    assert act.sum == pytest.approx(out.sum().item(), rel=1e-5, abs=1e-6)
    assert grad.sum == pytest.approx(model[0].w.grad.double().sum().item(), rel=1e-5, abs=1e-6)
    assert report.scalars["gradients/norm/0"] == pytest.approx(
        model[0].w.grad.double().norm().item(), rel=1e-5
    )


@pytest.mark.parametrize("depth", [2, 12])
def test_no_host_sync_on_non_logging_steps_and_a_constant_number_on_logging_steps(
    sync_counter, depth
):
    torch.manual_seed(5)
    model = mlp(depth=depth)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    diag = attach(model, every_n_steps=4, histogram_every_n_steps=8)
    counter = sync_counter()
    per_step = []
    for _ in range(9):
        before = len(counter.calls)
        model(torch.randn(8, 8)).pow(2).mean().backward()
        diag.before_optimizer_step()
        opt.step()
        opt.zero_grad()
        diag.step()
        per_step.append(len(counter.calls) - before)
    diag.detach()
    # steps 0, 4 and 8 log (0 and 8 with histograms); the others must not touch the host
    assert [n for i, n in enumerate(per_step) if i % 4] == [0] * 6
    assert all(1 <= per_step[i] <= 2 for i in (4, 8)), per_step
    # step 0 also runs the default shift probe (every 100 steps here), whose fit reads its
    # per-layer results back once
    assert per_step[0] > per_step[4], per_step


def test_a_failing_layer_warns_once_and_is_disabled_while_training_goes_on():
    model = mlp(depth=2)
    collector = Collector(model, select_modules(model))
    collector.attach()

    def broken(*args):
        raise RuntimeError("boom")

    collector._saturation[1] = "weird"  # any stats failure inside a hook
    import ln_diagnostics.collect.collector as module

    original = module.power_sums

    def power_sums(x, shift=None, saturation=None, **kwargs):
        if saturation == "weird":
            broken()
        return original(x, shift, saturation, **kwargs)

    module.power_sums = power_sums
    try:
        with pytest.warns(RuntimeWarning, match=r"layer '1' failed \(RuntimeError: boom\)"):
            report = run_step(collector, model, torch.randn(4, 8))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = run_step(collector, model, torch.randn(4, 8), step=1)
    finally:
        module.power_sums = original
    assert "activations/mean/1" not in report.scalars
    assert "activations/mean/0" in report.scalars


def test_nonfinite_warning_names_the_first_layer_in_forward_order():
    model = mlp(depth=3)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    collector = Collector(model, select_modules(model))
    collector.attach()
    with pytest.warns(RuntimeWarning, match=r"non-finite activations at step 7; .* '2'"):
        report = run_step(collector, model, torch.randn(4, 8), step=7)
    assert report.scalars["activations/nonfinite/2"] == 4  # one output column of 4 samples
    assert report.scalars["activations/nonfinite/0"] == 0
    assert report.scalars["health/nonfinite_activations"] > 0
    assert report.scalars["health/nonfinite_grads"] > 0


def test_attach_writes_event_files_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(6)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    norms = {}
    with SummaryWriter(tmp_path) as writer, attach(model, writer=writer, every_n_steps=3) as diag:
        for step in range(7):
            model(torch.randn(8, 8)).pow(2).mean().backward()
            norms[step] = torch.cat([p.grad.reshape(-1) for p in model[4].parameters()]).norm()
            diag.before_optimizer_step()
            opt.step()
            opt.zero_grad()
            diag.step()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    events = acc.Scalars("gradients/norm/4")
    assert [e.step for e in events] == [0, 3, 6]
    for e in events:
        assert e.value == pytest.approx(norms[e.step].item(), rel=1e-5)
    assert "activations/hist/1" in acc.Tags()["histograms"]
    assert [e.step for e in acc.Histograms("activations/hist/1")] == [0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be an integer >= 1; got 0"),
        ({"every_n_steps": 2.5}, "every_n_steps must be an integer >= 1; got 2.5"),
        (
            {"histogram_every_n_steps": -1},
            "histogram_every_n_steps must be an integer >= 0; got -1",
        ),
        (
            {"include": 3},
            "include must be a glob string or a list of non-empty glob strings; got 3",
        ),
        ({"types": ["torch.nn.Nope"]}, "types: could not import 'torch.nn.Nope'"),
        (
            {"types": [int]},
            "types must be nn.Module classes or their dotted paths; got <class 'int'>",
        ),
        ({"track_updates": "yes"}, "track_updates must be True or False; got 'yes'"),
        (
            {"writer": object()},
            "writer must be a torch.utils.tensorboard.SummaryWriter or None; got object",
        ),
        (
            {"include": ["nothing*"]},
            r"no module of Sequential matched .* some module names: 0 \(Linear\)",
        ),
    ],
)
def test_attach_rejects_bad_arguments_with_clear_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        attach(mlp(), **kwargs)


def test_non_finite_parameters_still_log_their_ratios_as_nan():
    """A diverged run must show NaN ratios, not silently drop them (thresholds need to see them)."""
    model = mlp(depth=2)
    collector = Collector(model, select_modules(model))
    collector.attach()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")  # the weights diverged before this step
    collector.begin_step(0, scalars=True, histograms=False)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    collector.before_optimizer_step()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    with pytest.warns(RuntimeWarning, match="non-finite"):
        report = collector.end_step()
    assert math.isnan(report.scalars["updates/ratio/2"])
    assert math.isnan(report.scalars["health/update_ratio_total"])
    assert math.isnan(report.scalars["gradients/ratio/2"])


def test_norms_of_a_multi_million_element_tensor_are_accumulated_in_float64():
    """A float32 sum of squares of 2.4 M elements is off by ~4e-5 relative; float64 is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2000, 1200))
    with torch.no_grad():
        model[0].weight.normal_()
    collector = Collector(model, select_modules(model), track_updates=False)
    collector.begin_step(0, scalars=True, histograms=False)
    model(torch.randn(4, 2000)).square().mean().backward()
    collector.before_optimizer_step()
    scalars = collector.end_step().scalars
    params = list(model.parameters())
    for tag, tensors in (
        ("parameters/norm/0", [p.detach() for p in params]),
        ("gradients/norm/0", [p.grad for p in params]),
    ):
        want = torch.cat([t.reshape(-1) for t in tensors]).double().norm().item()
        assert scalars[tag] == pytest.approx(want, rel=1e-5)
