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
from ln_diagnostics.tensorboard.layout import DEPTH_TITLE, HEALTH_TITLE, build_layout, stat_keys
from ln_diagnostics.tensorboard.summary_text import (
    LayerRow,
    changed_options,
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


def test_layout_health_then_depth_then_shift_then_every_layer_collapsed():
    tags = [
        "updates/ratio/a",
        "health/grad_norm_total",
        "health/param_norm_total",
        "health/backprop_depth_log10",
        "health/nonfinite_grads",
        "health/shift_mean_init",
        "health/findings",  # a model-wide scalar the layout does not know: kept in Health
        "activations/mean/a",
        "activations/std/a",
        "backprop/norm/a",
        "gradients/norm/a",
        "loss",
        heatmap_tag("activation_std"),
    ]
    layout = build_layout(stat_keys(tags))
    titles = [(c.title, c.closed) for c in layout.category]
    assert titles == [
        (HEALTH_TITLE, False),
        (DEPTH_TITLE, False),
        ("Shift", False),
        ("All layers: activations", True),
        ("All layers: gradients", True),
        ("All layers: backprop", True),
        ("All layers: parameters", True),
        ("All layers: updates", True),
    ]
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    health = [c.title for c in layout.category[0].chart]
    assert len(health) == 4  # depth, gradient norm, non-finite counts, the unknown scalar
    assert charts[health[0]] == [
        "^health/backprop_depth_log10$",
        "^health/backprop_depth_log10_step0$",
    ]
    assert charts["log10 total gradient norm"] == ["^log10/grad_norm_total$"]
    assert charts["health/findings"] == ["^health/findings$"]
    # bounded log10 charts: four role lines, for the four statistics that have them
    depth = {c.title: list(c.multiline.tag) for c in layout.category[1].chart}
    assert len(depth) == 4
    assert ["^log10/activation_std/(first|middle|last|worst)$"] in depth.values()
    assert charts["health/shift_mean_init"] == ["^health/shift_mean_init$"]
    assert [c.title for c in layout.category[3].chart] == ["activations/std", "activations/mean"]
    assert [c.title for c in layout.category[6].chart] == ["health/param_norm_total"]


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


def mlp_report(step, backprop, *, std=None):
    """A report of a Linear/Tanh stack: ``backprop`` and ``std`` per layer ``l0..``; even layers
    own parameters."""
    scalars = {}
    for k in range(len(backprop)):
        scalars[f"activations/std/l{k}"] = 1.0 if std is None else std[k]
    for k, value in enumerate(backprop):
        scalars[f"backprop/norm/l{k}"] = value
    for k in range(0, len(backprop), 2):
        scalars[f"parameters/norm/l{k}"] = 1.0
    return StepReport(step, scalars, {})


def test_backprop_heatmap_is_log10_relative_to_the_last_stack_layer():
    with SummaryWriter(tempfile.mkdtemp()) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0, max_steps=2)
        for step in range(3):
            # l0 input projection, l1..l5 hidden stack, l6 head
            norms = [1.0, 10.0**-step, 1e-3, 1e-2, 0.0, 0.1, 5.0]
            board.update(mlp_report(step, norms))
        matrix, rows, steps = board.heatmap("backprop_log10_norm")
    assert board.stack() == ["l1", "l2", "l3", "l4", "l5"]
    assert rows == [f"l{k}" for k in range(7)] and steps == [1, 2]
    expected = [math.log10(v / 0.1) for v in (1.0, 1e-1, 1e-3, 1e-2)]
    assert matrix[0, 0] == pytest.approx(expected[0])
    assert matrix[1].tolist() == pytest.approx([expected[1], math.log10(1e-2 / 0.1)])
    assert matrix[2, 1] == pytest.approx(expected[2])
    assert all(math.isnan(v) for v in matrix[4])  # a zero norm has no logarithm
    assert matrix[5].tolist() == [0.0, 0.0]  # the reference layer itself


def test_log10_views_pick_first_middle_last_and_worst_of_the_stack(tmp_path, events):
    with SummaryWriter(tmp_path) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0)
        std = [1.0, 0.5, 0.02, 0.9, 2.0, 1.1, 1.0]
        board.update(mlp_report(0, [1.0, 1e-4, 1e-3, 1e-2, 1e-2, 0.1, 5.0], std=std))
        report = mlp_report(10, [1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 5.0])
        report.scalars["health/backprop_depth_log10"] = 0.0
        board.update(report)
    acc = events(tmp_path)
    value = {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    # first / middle / last of l1..l5 = l1, l3, l5; worst = farthest from the stack's median
    assert value["log10/backprop_norm/first"] == pytest.approx([-4.0, -1.0])
    assert value["log10/backprop_norm/middle"] == pytest.approx([-2.0, -1.0])
    assert value["log10/backprop_norm/last"] == pytest.approx([-1.0, -1.0])
    assert value["log10/backprop_norm/worst"] == pytest.approx([-4.0, -1.0])
    # activation std: worst is farthest from 1 in decades (l2, 0.02)
    assert value["log10/activation_std/worst"][0] == pytest.approx(math.log10(0.02))
    # no depth at step 0 in these reports: no step-0 line either
    assert "health/backprop_depth_log10_step0" not in value


def test_step0_depth_is_repeated_at_every_logging_step(tmp_path, events):
    with SummaryWriter(tmp_path) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=0)
        for step, depth in ((0, -4.0), (10, -2.0), (20, -1.0)):
            report = mlp_report(step, [1.0, 1e-4, 1e-3, 1e-2, 1e-2, 0.1, 5.0])
            report.scalars["health/backprop_depth_log10"] = depth
            board.update(report)
    series = events(tmp_path).Scalars("health/backprop_depth_log10_step0")
    assert [(e.step, e.value) for e in series] == [(0, -4.0), (10, -4.0), (20, -4.0)]


def test_pictures_are_drawn_on_their_interval_and_once_more_at_the_end(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with SummaryWriter(tmp_path) as writer:
        board = Dashboard(writer, heatmap_every_n_steps=20, layer_types={"l1": "Tanh"})
        for step in range(0, 35, 5):
            board.update(mlp_report(step, [1.0, 1e-4, 1e-3, 1e-2, 1e-2, 0.1, 5.0]))
        board.finish()
        board.finish()  # the last step is drawn once
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    for name in ("backprop_log10_norm", "activation_std", "depth_profile"):
        assert [e.step for e in acc.Images(heatmap_tag(name))] == [20, 30]
    assert board.label("l1") == "l1 Tanh" and board.label("l2") == "l2"
    _, panels = board.profile_panels()
    assert [line[0] for line in panels[0].lines] == ["step 0", "step 30"]


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


def test_hparams_hold_only_the_options_that_differ_from_their_defaults():
    callback = LayerDiagnostics(every_n_steps=3, track_updates=True, probe_batch=torch.zeros(2))
    assert set(callback.options.changed()) == {"every_n_steps", "probe_batch"}
    options = constructor_options(callback, callback.options)
    assert set(changed_options(callback, options)) == {"every_n_steps", "probe_batch"}
    assert changed_options(LayerDiagnostics(), constructor_options(LayerDiagnostics())) == {}
    assert LayerDiagnostics().options.changed() == {}


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
