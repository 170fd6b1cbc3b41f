"""``DiagnosticThresholds`` live and ``ln-diagnostics check`` on the event files of the same run
reach the same verdicts: same rules decided, same tags, values, steps and counts."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn

from ln_diagnostics import ThresholdViolation
from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics
from ln_diagnostics.cli import main

MAX_STEPS = 16
LOG_EVERY = 2

# Every kind of rule: bounds over every point (max, min, both), aggregates (mean, max, last,
# a window), a warn severity, finding rules that fail and pass, an optional rule that matches
# nothing (ICS is off by default).
RULES = """
[[rule]]
name = "bounded gradients"
tag = "gradients/norm/*"
max = 2.4

[[rule]]
name = "alive activations"
tag = "activations/std/*"
min = 0.05

[[rule]]
tag = "parameters/norm/*"
min = 0.9
max = 100.0

[[rule]]
name = "mean update ratio"
tag = "updates/ratio/*"
max = 0.05
over = "mean"
after_step = 4

[[rule]]
tag = "health/grad_norm_total"
max = 4.0
over = "max"

[[rule]]
tag = "activations/absmax/*"
max = 1.0
over = "last"

[[rule]]
name = "quiet backprop"
tag = "backprop/norm/*"
max = 0.5
severity = "warn"

[[rule]]
finding = "update_ratio_large"

[[rule]]
finding = "vanishing_gradients"

[[rule]]
tag = "ics/*"
max = 1.0
optional = true
"""


class Mlp(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
        )


def _check(logdir, rules, tmp_path):
    """``ln-diagnostics check --json``: its exit code and results."""
    out = tmp_path / "check.json"
    code = main(["check", str(logdir), "--thresholds", str(rules), "--json", str(out)])
    return code, json.loads(out.read_text())["results"]


def _number(value):
    return float(value)  # the JSON report writes NaN and infinities as strings


def _verdicts(results):
    """``(rule, tag) -> (status, value, step, points, first_step, crossings)``."""
    return {
        (r["rule"], r["tag"]): (
            r["status"],
            _number(r["value"]),
            r["step"],
            r["points"],
            r["first_step"],
            r["crossings"],
        )
        for r in results
    }


def _live_verdicts(thresholds):
    verdicts = {}
    for r in thresholds.evaluator.results():
        status = "PASS" if r.passed else ("WARN" if r.rule.severity == "warn" else "FAIL")
        verdicts[(r.rule.label, r.tag)] = (
            status,
            r.value,
            r.step,
            r.points,
            r.first_step,
            r.crossings,
        )
    return verdicts


def _assert_same(live, check):
    assert live.keys() == check.keys()
    for key, (status, value, *counts) in check.items():
        live_status, live_value, *live_counts = live[key]
        assert (live_status, live_counts) == (status, counts), key
        assert live_value == pytest.approx(value, rel=1e-6, nan_ok=True), key


def _fit(make_trainer, *callbacks):
    torch.manual_seed(0)
    trainer = make_trainer(list(callbacks), max_steps=MAX_STEPS, log_every_n_steps=LOG_EVERY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Mlp())
    return trainer, [str(w.message) for w in caught if "DiagnosticThresholds" in str(w.message)]


def _rule_of(message):
    return message.split("threshold rule ")[1].split(" violated")[0].strip("'")


def test_live_and_check_agree_on_a_run_stopped_by_the_first_violation(
    make_trainer, events, tmp_path, capsys
):
    rules = tmp_path / "thresholds.toml"
    rules.write_text(RULES)
    thresholds = DiagnosticThresholds(rules)
    with pytest.raises(ThresholdViolation) as caught:
        _fit(make_trainer, LayerDiagnostics(), thresholds)
    error = caught.value
    assert (error.rule, error.step, error.bound) == ("bounded gradients", 0, "max 2.4")
    # the failing tags and the worst value are those of the event file
    scalars = events(tmp_path / "run" / "version_0")
    logged = {
        tag: scalars.Scalars(tag)[0].value
        for tag in scalars.Tags()["scalars"]
        if tag.startswith("gradients/norm/")
    }
    assert set(error.failing) == {tag for tag, value in logged.items() if value > 2.4}
    assert error.value == pytest.approx(max(logged.values()), rel=1e-6)
    # Training stopped at step 0, before the window of 'mean update ratio': check refuses the
    # rule for the reason the callback gives.
    capsys.readouterr()
    assert main(["check", str(tmp_path / "run"), "--thresholds", str(rules)]) == 2
    [(_, reason)] = [
        (rule, why) for rule, why in thresholds.evaluator.unmatched() if rule.after_step
    ]
    assert reason.startswith("rule 'mean update ratio' matches 3 tags but none has a point")
    assert reason.split(" in the logged diagnostics")[0] in capsys.readouterr().err


def test_live_and_check_give_the_same_verdicts_on_a_whole_run(make_trainer, tmp_path):
    rules = tmp_path / "thresholds.toml"
    rules.write_text(RULES)
    thresholds = DiagnosticThresholds(rules, on_violation="warn")
    trainer, warned = _fit(make_trainer, LayerDiagnostics(), thresholds)
    assert trainer.global_step == MAX_STEPS

    code, results = _check(tmp_path / "run", rules, tmp_path)
    assert code == 1
    check = _verdicts(results)
    _assert_same(_live_verdicts(thresholds), check)
    # each rule has the verdicts it is there for, so the comparison is not vacuous
    statuses: dict[str, set[str]] = {}
    for (rule, _), (status, *_) in check.items():
        statuses.setdefault(rule, set()).add(status)
    assert statuses == {
        "bounded gradients": {"PASS", "FAIL"},
        "alive activations": {"PASS", "FAIL"},
        "parameters/norm/*": {"PASS", "FAIL"},
        "mean update ratio": {"PASS", "FAIL"},
        "health/grad_norm_total": {"FAIL"},
        "activations/absmax/*": {"PASS", "FAIL"},
        "quiet backprop": {"PASS", "WARN"},
        "finding update_ratio_large": {"FAIL"},
        "finding vanishing_gradients": {"PASS"},
    }
    # the callback reported, once each, the rules that check fails or warns on
    failed = {rule for rule, found in statuses.items() if found - {"PASS"}}
    assert sorted(_rule_of(m) for m in warned) == sorted(failed)


def test_two_sources_logging_one_tag_at_one_step_give_two_points(make_trainer, tmp_path):
    # Both callbacks log health/update_ratio_total at every logging step, the second over
    # layer.0 only, so the values differ; the event file holds both points of each step, and
    # check counts both: so does the callback, not only the first source's.
    tag = "health/update_ratio_total"
    rules = tmp_path / "thresholds.toml"
    rules.write_text(
        f'[[rule]]\nname = "mean"\ntag = "{tag}"\nmax = 0.024\nover = "mean"\n\n'
        f'[[rule]]\nname = "last"\ntag = "{tag}"\nmax = 0.03\nover = "last"\n'
    )
    thresholds = DiagnosticThresholds(rules, on_violation="warn")
    sources = [LayerDiagnostics(), LayerDiagnostics(include="layer.0")]
    points: list[list[float]] = [[], []]
    for source, kept in zip(sources, points, strict=True):
        source.add_listener(lambda logged, kept=kept: kept.append(logged.scalars[tag]))
    _, warned = _fit(make_trainer, *sources, thresholds)
    first, second = points
    assert len(first) == len(second) == MAX_STEPS // LOG_EVERY
    # the first source alone would fail both rules; both sources' points pass them
    both = math.fsum(first + second) / len(first + second)
    assert math.fsum(first) / len(first) > 0.024 > both
    assert first[-1] > 0.03 > second[-1]
    assert warned == []
    code, results = _check(tmp_path / "run", rules, tmp_path)
    assert code == 0
    check = _verdicts(results)
    assert check[("mean", tag)][1:4] == (pytest.approx(both, rel=1e-6), 14, 16)
    assert check[("last", tag)][1:4] == (pytest.approx(second[-1], rel=1e-6), 14, 16)
    _assert_same(_live_verdicts(thresholds), check)
