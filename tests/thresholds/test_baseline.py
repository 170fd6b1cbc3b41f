"""``ln-diagnostics baseline``: bounds per kind against numbers computed another way, and bad
input. The round trip on the example (a healthy run passes its baseline, ``--lr 50`` fails it)
is in ``tests/examples/test_examples.py``, on the runs the CI-gate test trains anyway."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ln_diagnostics.cli import main
from ln_diagnostics.thresholds.baseline import (
    BaselineError,
    baseline_bounds,
    baseline_toml,
    folds_of,
)
from ln_diagnostics.thresholds.rules import load_rules

RNG = np.random.default_rng(0)
SERIES = {  # two layers per family, three logging steps
    f"{family}/{layer}": [(step, float(v)) for step, v in zip((0, 10, 20), values, strict=True)]
    for family, scale, shift in [
        ("activations/std", 2.0, 0.0),
        ("activations/mean", 1.0, -0.5),
        ("activations/zero_frac", 0.5, 0.0),
        ("activations/nonfinite", 0.0, 0.0),
        ("ics/cos", 1.8, -0.9),
    ]
    for layer, values in (
        ("net.0", RNG.random(3) * scale + shift),
        ("net.2", RNG.random(3) * scale + shift),
    )
}
SERIES["health/backprop_depth_log10"] = [(0, -0.25), (10, 0.5)]
SERIES["health/nonfinite_grads"] = [(0, 0.0), (10, 0.0)]
SERIES["train/loss"] = [(0, 2.3), (10, 0.4)]


def extremes(prefix: str) -> tuple[float, float]:
    values = np.array([v for tag, points in SERIES.items() if tag.startswith(prefix)
                       for _, v in points], dtype=np.float64)  # fmt: skip
    return float(values.min()), float(values.max())


def test_bounds_per_kind_match_the_documented_margins():
    bounds = {
        b.rule.tag: b for b in baseline_bounds(folds_of(SERIES), factor=4.0, fraction_margin=0.05)
    }
    assert list(bounds) == [
        "activations/std/*",
        "activations/mean/*",
        "activations/zero_frac/*",
        "activations/nonfinite/*",
        "ics/cos/*",
        "health/backprop_depth_log10",
        "health/nonfinite_grads",
    ]  # train/loss is outside the tag grammar: no rule
    lo, hi = extremes("activations/std/")
    assert (bounds["activations/std/*"].rule.min, bounds["activations/std/*"].rule.max) == (
        pytest.approx(lo / 4),
        pytest.approx(hi * 4),
    )
    lo, hi = extremes("activations/mean/")
    width = max(hi - lo, abs(lo), abs(hi))
    assert bounds["activations/mean/*"].kind == "signed"
    assert bounds["activations/mean/*"].rule.min == pytest.approx(lo - width)
    assert bounds["activations/mean/*"].rule.max == pytest.approx(hi + width)
    lo, hi = extremes("activations/zero_frac/")
    assert bounds["activations/zero_frac/*"].rule.min == pytest.approx(max(0.0, lo - 0.05))
    assert bounds["activations/zero_frac/*"].rule.max == pytest.approx(min(1.0, hi + 0.05))
    lo, hi = extremes("ics/cos/")
    assert bounds["ics/cos/*"].kind == "cosine"
    assert bounds["ics/cos/*"].rule.min == pytest.approx(max(-1.0, lo - 0.05))
    assert bounds["ics/cos/*"].rule.max == pytest.approx(min(1.0, hi + 0.05))
    depth = bounds["health/backprop_depth_log10"].rule
    assert (depth.min, depth.max) == (
        pytest.approx(-0.25 - math.log10(4)),
        pytest.approx(0.5 + math.log10(4)),
    )
    for exact in ("activations/nonfinite/*", "health/nonfinite_grads"):
        assert (bounds[exact].rule.min, bounds[exact].rule.max) == (None, 0.0)
    assert (bounds["activations/std/*"].tags, bounds["activations/std/*"].points) == (2, 6)


def test_the_file_reads_back_to_the_same_rules(tmp_path):
    bounds = baseline_bounds(folds_of(SERIES))
    file = tmp_path / "t.toml"
    file.write_text(baseline_toml(bounds, header=["from a test"]))
    assert load_rules(file) == tuple(b.rule for b in bounds)


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        ("activations/std/net.0", math.nan, "activations/std/net.0 = nan at step 10: a baseline"),
        ("gradients/norm/net.0", math.inf, "gradients/norm/net.0 = inf at step 10"),
        ("health/nonfinite_grads", 3.0, "health/nonfinite_grads = 3 at step 10"),
    ],
)
def test_an_unhealthy_run_gets_no_baseline(tag, value, message):
    with pytest.raises(BaselineError, match=message):
        baseline_bounds(folds_of({**SERIES, tag: [(0, 0.0), (10, value)]}))


def test_bad_margins_and_no_diagnostics():
    with pytest.raises(ValueError, match=r"factor must be a finite number > 1; got 1\.0"):
        baseline_bounds(folds_of(SERIES), factor=1.0)
    with pytest.raises(ValueError, match=r"fraction_margin must be a finite number >= 0; got -1"):
        baseline_bounds(folds_of(SERIES), fraction_margin=-1)
    with pytest.raises(BaselineError, match="no ln-diagnostics scalar"):
        baseline_bounds(folds_of({"train/loss": [(0, 1.0)]}))


def test_bad_input_exits_2_with_a_message(tmp_path, capsys, write_run):
    run = write_run(tmp_path / "runs" / "a", SERIES)
    out = tmp_path / "t.toml"
    cases = [
        (["baseline", str(tmp_path / "missing"), "--out", str(out)], "missing"),
        (["baseline", str(run), "--out", str(tmp_path / "no" / "t.toml")],
         f"directory '{tmp_path / 'no'}' does not exist"),
        (["baseline", str(run), "--out", str(tmp_path)], "is a directory"),
        (["baseline", str(run), "--out", str(out), "--factor", "1"], "expected a number > 1"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()

    assert main(["baseline", str(run), "--out", str(out)]) == 0
    assert "7 rules from 13 tags of run" in capsys.readouterr().out
    assert main(["baseline", str(run), "--out", str(out)]) == 2
    assert f"--out '{out}' already exists; pass --force to overwrite it" in capsys.readouterr().err
    assert main(["baseline", str(run), "--out", str(out), "--force"]) == 0

    write_run(tmp_path / "runs" / "b", SERIES)
    assert main(["baseline", str(tmp_path / "runs"), "--out", str(out), "--force"]) == 2
    assert "holds 2 runs (a, b); pass the directory of the one healthy run" in (
        capsys.readouterr().err
    )
    sick = write_run(tmp_path / "sick", {**SERIES, "health/nonfinite_grads": [(0, 2.0)]})
    assert main(["baseline", str(sick), "--out", str(out), "--force"]) == 2
    assert "health/nonfinite_grads = 2 at step 0: a baseline needs a healthy run" in (
        capsys.readouterr().err
    )
