"""The bounded history and the run-info record."""

import numpy as np
import pytest

from ln_diagnostics.diagnose import History, LayerInfo, RunInfo


def test_history_keeps_every_point_below_the_bound():
    h = History(max_entries=8)
    for step in range(7):
        h.add(step * 10, {"backprop/norm/a": step + 0.1, "val/backprop/norm/a": 5.0})
    assert h.series() == {
        "backprop/norm/a": [(s * 10, float(np.float32(s + 0.1))) for s in range(7)]
    }


def test_history_thins_evenly_and_keeps_the_first_step():
    h = History(max_entries=4)
    for step in range(20):
        h.add(step, {"health/grad_norm_total": float(step)})
    points = h.series()["health/grad_norm_total"]
    assert [s for s, _ in points] == [0, 8, 16]
    assert len(h) <= 4


def test_history_from_series_is_what_the_callback_keeps():
    reports = [(s, {"gradients/norm/a": s * 1.5, "updates/ratio/b": 1e-3}) for s in range(0, 90, 3)]
    live = History(max_entries=8)
    for step, scalars in reports:
        live.add(step, scalars)
    logged = {
        "gradients/norm/a": [(s, v["gradients/norm/a"]) for s, v in reports],
        "updates/ratio/b": [(s, v["updates/ratio/b"]) for s, v in reports],
    }
    assert History.from_series(logged, max_entries=8).series() == live.series()


def test_history_ignores_reports_without_a_relevant_tag():
    h = History(max_entries=2)
    h.add(0, {"train/loss": 1.0})
    h.add(1, {"backprop/norm/a": 1.0})
    assert len(h) == 1


def test_history_bad_bound():
    with pytest.raises(ValueError, match="max_entries must be an integer >= 2; got 1"):
        History(max_entries=1)


def test_runinfo_round_trip_and_fallback():
    info = RunInfo((LayerInfo("net.0", "Linear", True), LayerInfo("net.1", "ReLU", False)), 2)
    assert RunInfo.from_json(info.to_json()) == info
    evaluated = RunInfo(info.layers, 2, eval_batch_size=1)
    assert RunInfo.from_json(evaluated.to_json()).eval_batch_size == 1
    older = '{"version": 1, "layers": [["net.0", "Linear", true]], "batch_size": 2}'
    assert RunInfo.from_json(older) == RunInfo((LayerInfo("net.0", "Linear", True),), 2)
    tags = [
        "activations/std/net.0",
        "activations/std/net.1",
        "parameters/norm/net.0",
        "val/parameters/norm/net.1",
        "health/grad_norm_total",
    ]
    assert RunInfo.from_tags(tags) == RunInfo(
        (LayerInfo("net.0", "", True), LayerInfo("net.1", "", False)), None, "tag order"
    )


@pytest.mark.parametrize("text", ["not json", '{"layers": [["a", "Linear"]]}', "[]"])
def test_runinfo_bad_record(text):
    with pytest.raises(ValueError, match="expected a JSON object with 'layers'"):
        RunInfo.from_json(text)
