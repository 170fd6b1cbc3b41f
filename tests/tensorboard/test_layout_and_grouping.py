"""Layout, text summary and per-block grouping, against references computed independently."""

import math
import tempfile

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.collector import Collector, select_modules
from ln_diagnostics.collect.grouping import block_name, block_names
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.stats.moments import reshift
from ln_diagnostics.tags import heatmap_tag, stat_regex
from ln_diagnostics.tensorboard.dashboard import Dashboard
from ln_diagnostics.tensorboard.layout import build_layout, stat_keys
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    constructor_options,
    hparam_value,
    run_summary_markdown,
)


@pytest.mark.parametrize(
    ("group", "stat", "prefix", "expected"),
    [
        ("activations", "std", "", "^activations/std/.+$"),
        ("shift", "kl_init", "val/", "^val/shift/kl_init/.+$"),
        ("health", "grad_norm_total", "", "^health/grad_norm_total$"),
    ],
)
def test_stat_regex(group, stat, prefix, expected):
    assert stat_regex(group, stat, prefix=prefix) == expected


def test_stat_regex_rejects_unknown_group():
    with pytest.raises(ValueError, match=r"group must be one of .*; got 'nope'"):
        stat_regex("nope", "std")


def test_layout_order_health_first_then_groups():
    tags = [
        "updates/ratio/a",
        "health/grad_norm_total",
        "activations/mean/a",
        "activations/std/a",
        "gradients/norm/a",
        "loss",
        heatmap_tag("activation_std"),
    ]
    layout = build_layout(stat_keys(tags))
    assert [c.title for c in layout.category] == ["Health", "activations", "gradients", "updates"]
    assert [c.title for c in layout.category[1].chart] == ["activations/std", "activations/mean"]


def test_dashboard_rewrites_layout_only_when_a_statistic_appears():
    with SummaryWriter(tempfile.mkdtemp()) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0)
        writes = []
        original = board.write_layout

        def spy(step):
            writes.append(step)
            original(step)

        board.write_layout = spy
        board.update(StepReport(0, {"activations/std/a": 1.0}, {}))
        board.update(StepReport(1, {"activations/std/a": 1.0, "activations/std/b": 2.0}, {}))
        board.update(StepReport(2, {"activations/std/a": 1.0, "shift/kl_init/a": 0.1}, {}))
    assert writes == [0, 2]


def test_dashboard_heatmap_matrix_keeps_forward_order_and_last_steps():
    with SummaryWriter(tempfile.mkdtemp()) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0, max_steps=2)
        for step in range(3):
            scalars = {"backprop/norm/in": 10.0**-step, "backprop/norm/out": 0.0}
            board.update(StepReport(step, scalars, {}))
        matrix, rows, steps = board.heatmap("backprop_log10_norm")
    assert rows == ["in", "out"] and steps == [1, 2]
    assert matrix[0].tolist() == [-1.0, -2.0]
    assert all(math.isnan(v) for v in matrix[1])  # a zero norm has no logarithm


def test_reports_without_heatmap_values_add_no_column():
    """Probe reports (shift, ICS) can come on steps that log no layer statistics."""
    with SummaryWriter(tempfile.mkdtemp()) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0)
        board.update(StepReport(0, {"activations/std/a": 1.0}, {}))
        board.update(StepReport(10, {"shift/mean_init/a": 0.5, "health/shift_mean_init": 0.5}, {}))
        board.update(StepReport(50, {"activations/std/a": 2.0}, {}))
        matrix, rows, steps = board.heatmap("activation_std")
    assert (rows, steps, matrix.tolist()) == (["a"], [0, 50], [[1.0, 2.0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heatmap_every_n_steps": -1}, "heatmap_every_n_steps must be an integer >= 0; got -1"),
        ({"heatmap_every_n_steps": 1, "max_steps": 0}, "max_steps must be an integer >= 1; got 0"),
    ],
)
def test_dashboard_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dashboard(None, **kwargs)


def test_summary_markdown_and_options():
    callback = LayerDiagnostics(every_n_steps=3, include=["net.*"], group_depth=2)
    options = constructor_options(callback)
    assert options["every_n_steps"] == 3 and options["include"] == ("net.*",)
    assert options["group_depth"] == 2
    text = run_summary_markdown([LayerRow("net.0", "Linear", 12, "net")], options)
    assert "| 0 | `net.0` | Linear | 12 | `net` |" in text
    assert hparam_value(torch.zeros(3)) == "<Tensor>"
    assert hparam_value(nn.Linear) == "torch.nn.modules.linear.Linear"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_group_depth_is_validated(bad):
    with pytest.raises(ValueError, match=f"group_depth must be an integer >= 1; got {bad!r}"):
        LayerDiagnostics(group_depth=bad)


def test_block_names():
    assert block_name("encoder.layers.3.linear1", 2) == "encoder.layers"
    assert block_names(["head", "a.b.c"], depth=2) == {"head": "head", "a.b.c": "a.b"}


def test_reshift_matches_direct_sums():
    xs = torch.randn(100, dtype=torch.float64) * 3 + 5
    sums = [float(((xs - 4.0) ** p).sum()) for p in range(1, 5)]
    row = [4.0, *sums, float(xs.min()), float(xs.max())]
    expected = [float(((xs + 1.0) ** p).sum()) for p in range(1, 5)]
    assert reshift(row, 100, -1.0)[1:5] == pytest.approx(expected, rel=1e-10)


def test_grouped_statistics_match_pooled_references():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh()),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        nn.Linear(8, 1),
    )
    collector = Collector(model, select_modules(model))
    collector.set_groups(block_names(collector.names, depth=1))
    outputs = {}

    def keep(name):
        return lambda module, args, out: outputs.__setitem__(name, out.detach().double())

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    collector.attach()
    collector.begin_step(0, scalars=True, histograms=True)
    model(torch.randn(16, 4) * 2 + 1).pow(2).mean().backward()
    collector.before_optimizer_step()
    report = collector.end_step()
    collector.detach()
    for h in hooks:
        h.remove()
    s = report.scalars
    assert collector.group_names == ["0", "0", "1", "1", "2"]
    assert not any(t.endswith("/0.0") for t in s)
    pooled = torch.cat([outputs["0.0"].reshape(-1), outputs["0.1"].reshape(-1)])
    assert s["activations/mean/0"] == pytest.approx(pooled.mean().item(), rel=1e-5)
    assert s["activations/std/0"] == pytest.approx(pooled.std(unbiased=False).item(), rel=1e-5)
    centred = pooled - pooled.mean()
    kurt = (centred**4).mean() / (centred**2).mean() ** 2
    assert s["activations/kurtosis/0"] == pytest.approx(kurt.item(), rel=1e-4)
    assert s["activations/absmax/0"] == pytest.approx(pooled.abs().max().item(), rel=1e-6)
    sat = (outputs["0.1"].abs() > 0.97).sum().item() / pooled.numel()
    assert s["activations/saturated_frac/0"] == pytest.approx(sat)
    grads = torch.cat([p.grad.double().reshape(-1) for p in model[0].parameters()])
    params = torch.cat([p.detach().double().reshape(-1) for p in model[0].parameters()])
    assert s["gradients/norm/0"] == pytest.approx(grads.norm().item(), rel=1e-5)
    assert s["parameters/norm/0"] == pytest.approx(params.norm().item(), rel=1e-5)
    assert s["gradients/ratio/0"] == pytest.approx((grads.norm() / params.norm()).item(), rel=1e-5)
    assert "backprop/norm/1" in s and "activations/hist/1" in report.histograms
    assert report.histograms["activations/hist/0"].num == pooled.numel()
