"""ShiftProbe and ICSProbe on tiny plain-PyTorch models."""

import math

import pytest
import torch
from torch import nn

from ln_diagnostics.collect.collector import Collector, select_modules
from ln_diagnostics.collect.ics import ICSProbe
from ln_diagnostics.collect.probing import RNGState, preserved_state
from ln_diagnostics.collect.shift import ShiftProbe
from ln_diagnostics.stats.shift import EPS


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.Tanh(),
        nn.Dropout(0.3),
        nn.Linear(16, 8),
        nn.Tanh(),
        nn.Linear(8, 1),
    )


def test_unchanged_parameters_give_exactly_zero_shift_even_with_batchnorm_and_dropout():
    model = mlp()
    probe = ShiftProbe(model, select_modules(model), batch=torch.randn(32, 6))
    probe.measure(0)
    out = probe.measure(1)
    shift = {k: v for k, v in out.items() if k.startswith("shift/")}
    assert shift and all(v == 0.0 for v in shift.values())
    assert out["health/shift_mean_init"] == 0.0


def test_scaling_one_layer_by_two_gives_log4_at_its_output_and_downstream_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12, bias=False), nn.Tanh(), nn.Linear(12, 3, bias=False))
    batch = torch.randn(256, 5)
    probe = ShiftProbe(model, select_modules(model), batch=batch)
    probe.measure(0)
    with torch.no_grad():
        var = model.double()(batch.double()).var(0, unbiased=False)  # float64 reference
        model.float()
        model[2].weight.mul_(2.0)
    expected = torch.log((4 * var + EPS) / (var + EPS)).mean().item()
    out = probe.measure(1)
    assert out["shift/logvar_step/2"] == pytest.approx(expected, rel=1e-5)
    assert out["shift/logvar_step/2"] == pytest.approx(math.log(4.0), rel=1e-3)
    assert out["shift/logvar_init/2"] == pytest.approx(expected, rel=1e-5)
    assert out["shift/logvar_step/0"] == 0.0 and out["shift/mean_init/1"] == 0.0
    # against the previous probe nothing moved since; against init it still has
    out = probe.measure(2)
    assert out["shift/logvar_step/2"] == 0.0
    assert out["shift/logvar_init/2"] == pytest.approx(expected, rel=1e-5)


def test_probe_leaves_rng_buffers_and_collector_untouched():
    model = mlp()
    collector = Collector(model, select_modules(model))
    collector.attach()
    probe = ShiftProbe.from_collector(collector, batch=torch.randn(32, 6))
    buffers = [b.clone() for b in model.buffers()]
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    collector.begin_step(0, scalars=True, histograms=False)
    probe.measure(0)
    assert not collector._act  # the probe's forward was not collected
    assert torch.equal(torch.rand(5), expected)
    for a, b in zip(buffers, model.buffers(), strict=True):
        assert torch.equal(a, b)
    collector.end_step()
    collector.detach()
    assert all(not m._forward_hooks for m in model.modules())


def test_conv_feature_maps_use_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv1d(4, 4, 1))
    probe = ShiftProbe(model[:1], [("0", model[0])], batch=torch.randn(2, 3, 8, 8))
    probe.measure(0)
    assert probe.init["0"][0].shape == (4,)
    probe1d = ShiftProbe(model[1], [("1", model[1])], batch=torch.randn(2, 4, 9))
    probe1d.measure(0)
    assert probe1d.init["1"][0].shape == (4,)


def test_failing_forward_warns_once_and_disables():
    model = nn.Sequential(nn.Linear(3, 3))
    wrong_width = (torch.randn(2, 4), torch.randn(2))
    probe = ShiftProbe(model, select_modules(model), batch=wrong_width)
    state = RNGState.capture()
    with pytest.warns(RuntimeWarning, match="probe_forward"):
        assert probe.measure(0) == {}
    assert probe.disabled and probe.measure(1) == {}
    assert torch.equal(torch.get_rng_state(), state.cpu)
    assert not model[0]._forward_hooks


def test_state_dict_round_trip_keeps_the_init_reference():
    model = mlp()
    batch = torch.randn(32, 6)
    probe = ShiftProbe(model, select_modules(model), batch=batch)
    probe.measure(0)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    probe.measure(1)
    fresh = ShiftProbe(model, select_modules(model), batch=batch)
    fresh.load_state_dict(probe.state_dict())
    assert fresh.measure(2) == probe.measure(2)
    fresh.load_state_dict({})  # missing keys: empty references
    assert fresh.init == {} and fresh.prev == {}


def test_preserved_state_restores_buffers_after_an_exception():
    model = mlp()
    before = [b.clone() for b in model.buffers()]
    with pytest.raises(RuntimeError), preserved_state(model, seed=0):
        model(torch.randn(8, 6))
        raise RuntimeError("boom")
    for a, b in zip(before, model.buffers(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------- ICS
def hand_ics(model, x, y, lr, layer):
    """G and G′ of ``model[layer]`` for plain SGD, computed by hand with autograd.grad."""
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]

    def loss_at(values):
        w = dict(zip([id(p) for p in params], values, strict=True))
        h = x
        for m in model:
            h = torch.tanh(h @ w[id(m.weight)].T + w[id(m.bias)])
        return ((h - y) ** 2).mean()

    leaves = [t.clone().requires_grad_(True) for t in theta]
    grads = torch.autograd.grad(loss_at(leaves), leaves)
    updated = [t - lr * g for t, g in zip(theta, grads, strict=True)]
    mixed = [t.clone() for t in theta]
    for k in range(2 * layer):  # the layers before `layer` took their SGD step
        mixed[k] = updated[k]
    mixed = [t.requires_grad_(True) for t in mixed]
    shifted = torch.autograd.grad(loss_at(mixed), mixed[2 * layer : 2 * layer + 2])
    g = torch.cat([t.reshape(-1) for t in grads[2 * layer : 2 * layer + 2]]).double()
    h = torch.cat([t.reshape(-1) for t in shifted]).double()
    return (g - h).norm().item(), (g @ h / (g.norm() * h.norm())).item()


@pytest.mark.parametrize("lr", [0.1, 0.5])
def test_ics_matches_a_hand_computation_for_sgd(lr):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))

    def forward(m, x):
        for layer in m:
            x = torch.tanh(layer(x))
        return x

    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def loss(m, batch):
        return ((forward(m, batch[0]) - batch[1]) ** 2).mean()

    probe = ICSProbe(model, [(str(i), m) for i, m in enumerate(model)], loss=loss, select_all=True)
    expected = [hand_ics(model, x, y, lr, layer) for layer in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe.begin((x, y))
    ((forward(model, x) - y) ** 2).mean().backward()
    probe.before_optimizer_step()
    opt.step()
    after = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    out = probe.end()
    for layer, (l2, cos) in enumerate(expected):
        assert out[f"ics/l2/{layer}"] == pytest.approx(l2, rel=1e-4, abs=1e-7)
        assert out[f"ics/cos/{layer}"] == pytest.approx(cos, abs=1e-6)
    assert out["ics/l2/0"] == 0.0 and expected[2][0] > 0
    for p, a, g in zip(model.parameters(), after, grads, strict=True):  # no trace left
        assert torch.equal(p, a) and torch.equal(p.grad, g)


def test_ics_default_selection_picks_evenly_spaced_layers_in_forward_order():
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(7)]
    model = nn.Sequential(*reversed(layers))  # registration order differs from call order

    class Reverse(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            for m in reversed(list(self.body)):
                x = m(x)
            return x

    net = Reverse()
    names = [(f"body.{i}", m) for i, m in enumerate(model)]
    probe = ICSProbe(net, names, loss=lambda m, b: m(b).square().mean())
    x = torch.randn(3, 4)
    probe.begin(x)
    net(x).square().mean().backward()
    probe.before_optimizer_step()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    out = probe.end()
    assert [n for n, _ in probe.layers] == ["body.6", "body.4", "body.2", "body.0"]
    assert out["ics/l2/body.6"] == 0.0 and set(out) >= {"ics/cos/body.0", "health/ics_cos_mean"}
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_ics_failure_warns_disables_and_restores_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))

    def bad_loss(m, b):
        return m(b)  # not a scalar

    probe = ICSProbe(model, [("0", model[0]), ("1", model[1])], loss=bad_loss)
    x = torch.randn(5, 3)
    probe.begin(x)
    model(x).mean().backward()
    probe.before_optimizer_step()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="ics_loss"):
        assert probe.end() == {}
    assert probe.disabled
    for p, a in zip(model.parameters(), after, strict=True):
        assert torch.equal(p, a)


def test_default_forward_passes_as_many_batch_items_as_forward_takes():
    from ln_diagnostics.collect.probing import default_forward

    class One(nn.Module):
        def forward(self, x):
            return x * 2

    class Two(nn.Module):
        def forward(self, inputs, target):
            return inputs + target

    x, y = torch.ones(2), torch.full((2,), 3.0)
    assert default_forward(One(), (x, y)).tolist() == [2.0, 2.0]
    assert default_forward(Two(), [x, y]).tolist() == [4.0, 4.0]
    assert default_forward(Two(), {"inputs": x, "target": y}).tolist() == [4.0, 4.0]
    assert default_forward(One(), x).tolist() == [2.0, 2.0]


def test_detached_copy_keeps_the_structure_of_nested_batches():
    from collections import defaultdict, namedtuple
    from types import MappingProxyType

    from ln_diagnostics.collect.probing import detached_copy

    pair = namedtuple("Pair", "x y")
    x = torch.randn(3, requires_grad=True)
    by_key = defaultdict(list, {"x": x, "n": 7})
    batch = [pair(x, 1), by_key, MappingProxyType({"x": x}), (x,)]
    copied = detached_copy(batch)
    # mappings that cannot be built from (key, value) pairs come back as plain dicts
    assert type(copied[0]) is pair and type(copied[1]) is dict and type(copied[2]) is dict
    assert type(copied[3]) is tuple
    for t in (copied[0].x, copied[1]["x"], copied[2]["x"], copied[3][0]):
        assert t is not x and not t.requires_grad and torch.equal(t, x)
    assert copied[0].y == 1 and copied[1]["n"] == 7
