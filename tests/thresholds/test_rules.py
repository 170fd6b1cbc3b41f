"""Parsing and validation of threshold rules and files."""

from __future__ import annotations

import math

import pytest

from ln_diagnostics.thresholds.rules import Rule, RuleError, load_rules, parse_rules


def test_defaults_and_label():
    (rule,) = parse_rules([{"tag": "gradients/norm/*", "max": 10}])
    assert rule == Rule(tag="gradients/norm/*", max=10.0)
    assert (rule.over, rule.after_step, rule.optional, rule.label) == (
        "all",
        0,
        False,
        "gradients/norm/*",
    )
    named = parse_rules([{"name": "grads", "tag": "g/*", "min": -1, "max": 1.5, "over": "max"}])
    assert named[0].label == "grads"
    assert named[0].bound_text == "min -1, max 1.5"
    assert isinstance(named[0].min, float)
    assert rule.severity == "error"
    (warn,) = parse_rules([{"tag": "g/*", "max": 1, "severity": "warn"}])
    assert warn.severity == "warn"
    # the default severity leaves the state key that older checkpoints carry unchanged
    assert rule.key == "gradients/norm/*|gradients/norm/*|all|None|10.0|0|False"
    assert warn.key == "g/*|g/*|all|None|1.0|0|False|warn"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max": 1.0}, "rule 1: missing required key 'tag'"),
        ({"tag": "", "max": 1.0}, "key 'tag' must be a non-empty string glob"),
        ({"tag": 3, "max": 1.0}, "key 'tag' must be a non-empty string glob .*got int 3"),
        ({"tag": "x"}, "expected at least one of 'min' or 'max'; got neither"),
        (
            {"tag": "x", "min": 2.0, "max": 1.0},
            "'min' must not exceed 'max'; got min = 2 > max = 1",
        ),
        ({"tag": "x", "max": "10"}, "key 'max' must be a number; got str '10'"),
        ({"tag": "x", "max": True}, "key 'max' must be a number; got bool True"),
        ({"tag": "x", "max": math.nan}, "key 'max' must be a number; got float nan"),
        (
            {"tag": "x", "max": 1.0, "over": "median"},
            "key 'over' must be one of all, last, mean, max, min; got 'median'",
        ),
        ({"tag": "x", "max": 1.0, "after_step": -1}, "'after_step' must be a non-negative integer"),
        ({"tag": "x", "max": 1.0, "after_step": 1.5}, "'after_step' must be a non-negative .*1.5"),
        ({"tag": "x", "max": 1.0, "optional": "no"}, "'optional' must be true or false; got str"),
        ({"tag": "x", "max": 1.0, "name": 5}, "key 'name' must be a string; got int 5"),
        (
            {"tag": "x", "mx": 1.0},
            "unknown key 'mx'; valid keys: name, tag, min, max, over, after_step, optional, "
            "severity, finding",
        ),
        (
            {"tag": "x", "max": 1.0, "severity": "fatal"},
            "key 'severity' must be one of error, warn; got 'fatal'",
        ),
        ({"tag": "x", "max": 1.0, "severity": 1}, "key 'severity' must be one of error, warn"),
        ({"name": "grads", "tag": "x"}, r"rule 1 \('grads'\): expected at least one"),
        ("tag", "rule 1: expected a table of rule keys; got str"),
    ],
)
def test_invalid_rule_messages(raw, message):
    with pytest.raises(RuleError, match=message):
        parse_rules([raw], source="rules")


def test_rule_list_shape():
    with pytest.raises(RuleError, match="rules: expected at least one rule; got none"):
        parse_rules([])
    with pytest.raises(RuleError, match=r"expected a list of rules .*got dict"):
        parse_rules({"tag": "x", "max": 1})
    with pytest.raises(RuleError, match="rules: rule 2: missing required key 'tag'"):
        parse_rules([{"tag": "x", "max": 1}, {"max": 2}])


def test_load_rules_file(tmp_path):
    file = tmp_path / "t.toml"
    file.write_text(
        '[[rule]]\nname = "a"\ntag = "gradients/norm/*"\nmax = 10.0\n\n'
        '[[rule]]\ntag = "health/grad_norm_total"\nmax = 5\nover = "max"\nafter_step = 3\n'
    )
    rules = load_rules(file)
    assert [r.label for r in rules] == ["a", "health/grad_norm_total"]
    assert rules[1].over == "max" and rules[1].after_step == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rule]]\ntag = "x"\nmax = \n', r"t\.toml' is not valid TOML: .*line 3, column 7"),
        ('[[rule]]\ntag = "x"\nmax = 1\n\n[[rule]]\ntag = "y"\n', r"t\.toml:5: rule 2:"),
        ('[[rule]]\ntag = "x"\nmax = 1\nover = "p99"\n', r"t\.toml:1: rule 1: key 'over' must"),
        ('title = "x"\n[[rule]]\ntag = "x"\nmax = 1\n', "unknown top-level key 'title'"),
        ("", r"t\.toml: expected at least one \[\[rule\]\] table; got none"),
        (
            '[rule]\ntag = "x"\nmax = 1\n',
            r"'rule' must be an array of tables written as \[\[rule\]\]",
        ),
    ],
)
def test_load_rules_file_errors(tmp_path, text, message):
    file = tmp_path / "t.toml"
    file.write_text(text)
    with pytest.raises(RuleError, match=message):
        load_rules(file)


def test_load_rules_missing_or_directory(tmp_path):
    with pytest.raises(RuleError, match=r"threshold file '.*nope\.toml' does not exist"):
        load_rules(tmp_path / "nope.toml")
    with pytest.raises(RuleError, match="is a directory; expected a TOML file"):
        load_rules(tmp_path)
