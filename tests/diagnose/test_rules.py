"""Each diagnosis rule on synthetic series, table-driven: series in, findings out, boundaries
included (a bound is inclusive where the docs say "at least", exclusive where they say "above")."""

import math

import pytest

from ln_diagnostics.diagnose import (
    KINDS,
    Finding,
    LayerInfo,
    RunInfo,
    Thresholds,
    diagnose,
    findings_markdown,
    findings_table,
)

STACK = ["in", "h0", "h1", "h2", "h3", "out"]


def info(types=None, batch=None, names=STACK, eval_batch=None):
    types = types or {}
    return RunInfo(
        tuple(
            LayerInfo(n, types.get(n, "Linear"), types.get(n, "Linear") == "Linear") for n in names
        ),
        batch,
        eval_batch_size=eval_batch,
    )


def per_layer(stat, values, steps=(0,)):
    """``{stat/layer: [(step, value)]}`` with the same value at every step."""
    return {f"{stat}/{layer}": [(s, v) for s in steps] for layer, v in values.items()}


def depth(decades, steps=(0,)):
    """Backprop norms over h0..h3, geometric, first/last = 10**decades."""
    return per_layer(
        "backprop/norm", {f"h{k}": 10 ** (decades * (1 - k / 3)) for k in range(4)}, steps
    )


def kinds(findings):
    return [(f.kind, f.layer, f.first_step, f.last_step) for f in findings if f.kind != "healthy"]


BN = {"h1": "BatchNorm2d"}
RELU = {"h1": "ReLU", "h2": "Tanh"}

CASES = [
    # id, series, info, expected (kind, layer, first_step, last_step) without "healthy"
    ("vanishing at the bound", depth(-2.0), info(), [("vanishing_gradients", "h0", 0, 0)]),
    ("vanishing just inside", depth(-1.99), info(), []),
    ("exploding at the bound", depth(2.0), info(), [("exploding_gradients", "h0", 0, 0)]),
    ("exploding just inside", depth(1.99), info(), []),
    (
        "vanishing names the starved first layers",
        per_layer("backprop/norm", {"h0": 1e-5, "h1": 1e-4, "h2": 1e-2, "h3": 1e-1}),
        info(),
        [("vanishing_gradients", "h0 … h1 (2 layers)", 0, 0)],
    ),
    (
        "vanishing over a step range is one finding",
        {k: v + depth(0.0, (20,))[k] for k, v in depth(-3.0, (0, 10)).items()},
        info(),
        [("vanishing_gradients", "h0 … h1 (2 layers)", 0, 10)],
    ),
    (
        "embedding and head are not in the stack",
        per_layer(
            "backprop/norm", {"in": 1e-9, "h0": 1.0, "h1": 1.0, "h2": 1.0, "h3": 1.0, "out": 1e3}
        ),
        info(),
        [],
    ),
    (
        "growth across 4 blocks",
        per_layer("backprop/norm", {f"enc.{i}.ff": 10 ** (0.1 * i) for i in range(4)}),
        info(names=["in", *[f"enc.{i}.ff" for i in range(4)], "out"]),
        [("gradient_growth", "enc.0 … enc.3", 0, 0)],
    ),
    (
        "growth just below the bound",
        per_layer("backprop/norm", {f"enc.{i}.ff": 10 ** (0.0966 * i) for i in range(4)}),
        info(names=["in", *[f"enc.{i}.ff" for i in range(4)], "out"]),
        [],
    ),
    (
        "a plain stack has no blocks",
        per_layer("backprop/norm", {f"net.{i}": 10 ** (0.1 * i) for i in range(1, 6)}),
        info(names=[f"net.{i}" for i in range(7)]),
        [],
    ),
    (
        "growth needs 4 blocks",
        per_layer("backprop/norm", {f"enc.{i}.ff": 10 ** (0.5 * i) for i in range(3)}),
        info(names=["in", "x", *[f"enc.{i}.ff" for i in range(3)], "out"]),
        [],
    ),
    ("dead at the bound", per_layer("activations/zero_frac", {"h1": 0.9}), info(RELU), []),
    (
        "dead above the bound",
        per_layer("activations/zero_frac", {"h1": 0.91}),
        info(RELU),
        [("dead_units", "h1", 0, 0)],
    ),
    (
        "a dead layer is not also reported collapsed",
        {
            **per_layer("activations/zero_frac", {"h1": 1.0}),
            **per_layer("activations/std", {"h1": 0.0}),
            **per_layer("activations/rms", {"h1": 0.0}),
        },
        info(RELU),
        [("dead_units", "h1", 0, 0)],
    ),
    (
        "zeros of a non-ReLU are not dead",
        per_layer("activations/zero_frac", {"h2": 1.0}),
        info(RELU),
        [],
    ),
    ("saturated at the bound", per_layer("activations/saturated_frac", {"h2": 0.5}), info(), []),
    (
        "saturated above the bound",
        per_layer("activations/saturated_frac", {"h2": 0.51}),
        info(),
        [("saturated_units", "h2", 0, 0)],
    ),
    (
        "collapsed: all zero",
        {**per_layer("activations/std", {"h0": 0.0}), **per_layer("activations/rms", {"h0": 0.0})},
        info(),
        [("collapsed_activations", "h0", 0, 0)],
    ),
    (
        "collapsed at the relative bound",
        {**per_layer("activations/std", {"h0": 1e-4}), **per_layer("activations/rms", {"h0": 1.0})},
        info(),
        [("collapsed_activations", "h0", 0, 0)],
    ),
    (
        "not collapsed above it",
        {**per_layer("activations/std", {"h0": 2e-4}), **per_layer("activations/rms", {"h0": 1.0})},
        info(),
        [],
    ),
    (
        "nonfinite: first module in forward order and first step",
        {
            "activations/nonfinite/h1": [(0, 0.0), (10, 4.0)],
            "activations/nonfinite/h2": [(0, 0.0), (10, 3.0), (20, 1.0)],
        },
        info(),
        [("nonfinite", "h1", 10, 20)],
    ),
    (
        "nonfinite gradients only: the layer nearest the output",
        {"gradients/norm/h0": [(5, math.nan)], "gradients/norm/h3": [(5, math.inf)]},
        info(),
        [("nonfinite", "h3", 5, 5)],
    ),
    (
        "nonfinite in health only",
        {"health/nonfinite_grads": [(0, 0.0), (7, 2.0)]},
        info(),
        [("nonfinite", "", 7, 7)],
    ),
    (
        "update ratio small at most steps",
        {"updates/ratio/h0": [(0, 1e-6), (1, 1e-6), (2, 1e-3)]},
        info(),
        [("update_ratio_small", "h0", 0, 1)],
    ),
    (
        "update ratio small at one step of three",
        {"updates/ratio/h0": [(0, 1e-6), (1, 1e-3), (2, 1e-3)]},
        info(),
        [],
    ),
    ("update ratio at the low bound", {"updates/ratio/h0": [(0, 1e-5)]}, info(), []),
    ("update ratio at the high bound", {"updates/ratio/h0": [(0, 0.1)]}, info(), []),
    (
        "update ratio large, consecutive layers merged",
        per_layer("updates/ratio", {"h0": 0.2, "h1": 0.5, "h2": 1e-3, "h3": 0.3}),
        info(),
        [("update_ratio_large", "h0 … h1 (2 layers)", 0, 0), ("update_ratio_large", "h3", 0, 0)],
    ),
    (
        "exactly zero gradient",
        per_layer("gradients/norm", {"h0": 0.0, "h1": 1e-30}),
        info(),
        [("zero_gradients", "h0", 0, 0)],
    ),
    (
        "spike at the factor",
        {"health/grad_norm_total": [(s, 1.0) for s in range(5)] + [(5, 10.0)]},
        info(),
        [],
    ),
    (
        "spike above the factor",
        {"health/grad_norm_total": [(s, 1.0) for s in range(5)] + [(5, 10.01), (6, 1.0)]},
        info(),
        [("gradient_spike", "", 5, 5)],
    ),
    (
        "spike between logging steps, seen by the window maximum",
        {
            "health/grad_norm_total": [(s, 1.0) for s in range(0, 70, 10)],
            "health/grad_norm_total_max": [(s, 1.0) for s in range(0, 50, 10)]
            + [(50, 10.01), (60, 1.0)],
        },
        info(),
        [("gradient_spike", "", 50, 50)],
    ),
    (
        "window maximum at the factor",
        {
            "health/grad_norm_total": [(s, 1.0) for s in range(0, 70, 10)],
            "health/grad_norm_total_max": [(s, 10.0 if s == 50 else 1.0) for s in range(0, 70, 10)],
        },
        info(),
        [],
    ),
    (
        "spike needs 5 earlier steps",
        {"health/grad_norm_total": [(s, 1.0) for s in range(4)] + [(4, 100.0)]},
        info(),
        [],
    ),
    (
        "batchnorm below the batch bound",
        {"activations/std/h1": [(0, 1.0), (9, 1.0)]},
        info(BN, batch=7),
        [("batchnorm_small_batch", "h1", 0, 9)],
    ),
    ("batchnorm at the batch bound", {"activations/std/h1": [(0, 1.0)]}, info(BN, batch=8), []),
    ("batchnorm, batch unknown", {"activations/std/h1": [(0, 1.0)]}, info(BN), []),
    ("small batch without batchnorm", {"activations/std/h1": [(0, 1.0)]}, info(batch=2), []),
    (
        "batchnorm validated on batches of 1",
        {"activations/std/h1": [(0, 1.0), (9, 1.0)]},
        info(BN, batch=16, eval_batch=1),
        [("batchnorm_small_batch", "h1", 0, 9)],
    ),
    (
        "batchnorm validated at the eval bound",
        {"activations/std/h1": [(0, 1.0)]},
        info(BN, batch=16, eval_batch=2),
        [],
    ),
    (
        "batchnorm, eval batch unknown",
        {"activations/std/h1": [(0, 1.0)]},
        info(BN, batch=16),
        [],
    ),
    (
        "eval batch of 1 without batchnorm",
        {"activations/std/h1": [(0, 1.0)]},
        info(eval_batch=1),
        [],
    ),
    (
        "shift not settling: flat",
        {
            "health/shift_mean_step": [(s, 0.1) for s in range(6)],
            "shift/mean_step/h0": [(s, 0.1) for s in range(6)],
            "shift/mean_step/h2": [(s, 0.3) for s in range(6)],
        },
        info(),
        [("shift_not_settling", "h2", 0, 5)],
    ),
    (
        "shift settling",
        {"health/shift_mean_step": [(s, 0.1 / (s + 1)) for s in range(6)]},
        info(),
        [],
    ),
    (
        "shift with too few probes",
        {"health/shift_mean_step": [(s, 0.1) for s in range(5)]},
        info(),
        [],
    ),
]


@pytest.mark.parametrize(
    ("series", "run", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rule(series, run, expected):
    findings = diagnose(series, run)
    assert kinds(findings) == expected
    healthy = [f for f in findings if f.kind == "healthy"]
    assert len(healthy) == (0 if any(f.severity != "info" for f in findings) else 1)


@pytest.mark.parametrize(
    ("batch", "eval_batch", "value", "says"),
    [
        (16, 1, 1.0, ["validated on batches of 1 per device (bound 2)"]),
        (2, 1, 2.0, ["train on batches of 2 per device (bound 8)", "validated on batches of 1"]),
        (2, 64, 2.0, ["train on batches of 2 per device (bound 8)"]),
    ],
)
def test_batchnorm_finding_says_which_batch_is_small(batch, eval_batch, value, says):
    series = {"activations/std/h1": [(0, 1.0)]}
    (finding,) = [
        f for f in diagnose(series, info(BN, batch, eval_batch=eval_batch)) if f.kind != "healthy"
    ]
    assert finding.value == value and finding.severity == "warning"
    assert all(part in finding.message for part in says)
    assert ("validated" in finding.message) == (eval_batch == 1)
    assert (finding.evidence["batch_size"], finding.evidence["eval_batch_size"]) == (
        batch,
        eval_batch,
    )
    assert "NormSwap(target='layernorm')" in finding.advice
    at_the_bound = Thresholds(batchnorm_min_eval_batch=eval_batch)  # settable; exclusive
    lowered = diagnose(series, info(BN, batch, eval_batch=eval_batch), at_the_bound)
    assert not any("validated" in f.message for f in lowered)


def test_vanishing_evidence_has_the_ratio_and_the_steepest_step():
    norms = {"h0": 1e-6, "h1": 1e-5, "h2": 1e-1, "h3": 1.0}  # steepest: h1 -> h2, 4 decades
    (finding,) = [
        f
        for f in diagnose(per_layer("backprop/norm", norms), info())
        if f.kind == "vanishing_gradients"
    ]
    assert finding.value == pytest.approx(-6.0)
    assert finding.severity == "error"
    assert (finding.evidence["steepest_from"], finding.evidence["steepest_to"]) == ("h1", "h2")
    assert finding.evidence["steepest_decades"] == pytest.approx(-4.0)
    assert "6.00 decades" in finding.message


def test_thresholds_are_settable():
    series = depth(-1.5)
    assert kinds(diagnose(series, info())) == []
    strict = Thresholds(vanishing_decades=1.5)
    assert kinds(diagnose(series, info(), strict)) == [("vanishing_gradients", "h0", 0, 0)]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "spike_factor",
            -1.0,
            "Thresholds.spike_factor must be a finite non-negative number; got -1.0",
        ),
        (
            "dead_zero_frac",
            math.nan,
            "Thresholds.dead_zero_frac must be a finite non-negative number; got nan",
        ),
        ("spike_min_history", 2.5, "Thresholds.spike_min_history must be an integer; got 2.5"),
        (
            "update_ratio_low",
            1.0,
            "Thresholds.update_ratio_low must not exceed update_ratio_high; got 1 > 0.1",
        ),
    ],
)
def test_bad_thresholds_are_refused(field, value, message):
    with pytest.raises(ValueError) as info_:
        Thresholds(**{field: value})
    assert str(info_.value) == message


def test_ranked_by_severity_then_earliness():
    series = {
        **per_layer("activations/zero_frac", {"h1": 1.0}, (0, 10)),
        "activations/nonfinite/h0": [(0, 0.0), (10, 1.0)],
        "updates/ratio/h3": [(0, 0.5), (10, 0.5)],
    }
    findings = diagnose(series, info(RELU))
    assert [(f.severity, f.kind) for f in findings] == [
        ("error", "nonfinite"),
        ("warning", "dead_units"),
        ("warning", "update_ratio_large"),
    ]


def test_healthy_says_so_with_numbers():
    series = {
        **depth(0.3, (0, 10)),
        "health/update_ratio_total": [(0, 1e-3), (10, 2e-3)],
        "health/grad_norm_total": [(0, 1.0), (10, 2.0)],
    }
    (finding,) = diagnose(series, info())
    assert (finding.kind, finding.severity, finding.first_step, finding.last_step) == (
        "healthy",
        "info",
        0,
        10,
    )
    assert finding.evidence["depth_log10"] == pytest.approx(0.3)
    assert finding.evidence["update_ratio_median"] == pytest.approx(1.5e-3)
    assert "+0.30 decades" in finding.message


def test_no_statistics_no_findings():
    assert diagnose({"train/loss": [(0, 1.0)], "val/activations/std/h0": [(0, 0.0)]}) == []


def test_every_kind_is_covered_by_a_case():
    covered = {kind for _, series, run, expected in CASES for kind, *_ in expected}
    assert covered | {"healthy"} == set(KINDS)


def test_tables():
    f = Finding("dead_units", "warning", "a|b", 0, 4, 1.0, "all | zero", {}, "fix it")
    assert findings_markdown([f]).splitlines() == [
        "| severity | finding | layer | steps | what | what to try |",
        "|---|---|---|---|---|---|",
        "| warning | dead_units | a\\|b | 0–4 | all \\| zero | fix it |",
    ]
    assert findings_table([f]).splitlines() == [
        "SEVERITY  FINDING     LAYER  STEPS  WHAT",
        "warning   dead_units  a|b    0–4    all | zero",
        "                                    -> fix it",
    ]
    assert f.to_dict()["layer"] == "a|b"
