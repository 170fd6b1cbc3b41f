"""What CI reads from ``ln-diagnostics``: strict JUnit, severity, ``--failures-only``, natural
order of layers, and a ``summary`` that fits 100 columns on a real run."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.cli import _check_junit, main
from ln_diagnostics.thresholds.engine import RuleResult
from ln_diagnostics.thresholds.rules import Rule

# Jenkins' junit-10.xsd (the strict schema JUnit consumers validate against), element by element:
# (required attributes, optional attributes, allowed child elements).
_REPORT = ({"type", "message"}, set())
JUNIT_10 = {
    "testsuites": (set(), {"name", "time", "tests", "failures", "errors"}, {"testsuite"}),
    "testsuite": (
        {"name", "tests", "failures", "errors"},
        {
            "group",
            "time",
            "skipped",
            "timestamp",
            "hostname",
            "id",
            "package",
            "file",
            "log",
            "url",
        },
        {"testsuite", "properties", "testcase", "system-out", "system-err"},
    ),
    "testcase": (
        {"name"},
        {"time", "classname", "group"},
        {
            "skipped",
            "error",
            "failure",
            "rerunFailure",
            "rerunError",
            "flakyFailure",
            "flakyError",
            "system-out",
            "system-err",
        },
    ),
    "failure": (set(), *_REPORT),
    "error": (set(), *_REPORT),
    "skipped": (set(), *_REPORT),
    "system-out": (set(), set(), set()),
    "system-err": (set(), set(), set()),
}
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def validate_junit(element: ET.Element) -> None:
    """Raise AssertionError where ``element`` breaks junit-10.xsd, or what CI servers need on
    top of it: ``time`` on suites and cases, counts on ``<testsuites>`` that add up."""
    required, optional, children = JUNIT_10[element.tag]
    attributes = set(element.attrib)
    assert required <= attributes, (element.tag, required - attributes)
    assert attributes <= required | optional, (element.tag, attributes - required - optional)
    assert {child.tag for child in element} <= children, element.tag
    if "time" in element.attrib:
        assert SUREFIRE_TIME.fullmatch(element.get("time")), element.get("time")
    if element.tag in ("testsuite", "testcase"):
        assert "time" in element.attrib, element.tag
    if element.tag == "testsuite":
        cases = element.findall("testcase")
        assert int(element.get("tests")) == len(cases)
        assert int(element.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(element.get("errors")) == sum(c.find("error") is not None for c in cases)
        assert int(element.get("skipped", "0")) == sum(c.find("skipped") is not None for c in cases)
    if element.tag == "testsuites":
        for key in ("tests", "failures", "errors"):
            assert int(element.get(key)) == sum(int(suite.get(key)) for suite in element), key
    for child in element:
        validate_junit(child)


# logged in the order net.10, net.2, net.1: neither logged nor text order is numeric order
LAYERS = {
    "gradients/norm/net.10": [(0, 1.0), (1, 20.0)],
    "gradients/norm/net.2": [(0, 1.0), (1, 30.0)],
    "gradients/norm/net.1": [(0, 1.0), (1, 2.0)],
    "activations/std/net.10": [(0, 1.0), (1, 1.0)],
    "activations/std/net.2": [(0, 1.0), (1, 1.0)],
    "activations/std/net.1": [(0, 1.0), (1, 1.0)],
    "health/grad_norm_total": [(0, 3.0), (1, 40.0)],
}
RULES = """\
[[rule]]
name = "grads"
tag = "gradients/norm/*"
max = 10.0

[[rule]]
name = "total"
tag = "health/grad_norm_total"
max = 10.0
severity = "warn"

[[rule]]
name = "stds"
tag = "activations/std/*"
min = 0.1

[[rule]]
tag = "ics/*"
max = 1.0
optional = true
"""
NUMERIC = ["net.1", "net.2", "net.10"]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    file = tmp_path / "rules.toml"
    file.write_text(RULES)
    return file


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_check_warn_severity_failures_only_and_natural_order(
    tmp_path, rules_file, capsys, write_run
):
    logdir = write_run(tmp_path / "run", LAYERS)
    report = tmp_path / "r.json"
    # defaults first: every row
    assert main(["check", str(logdir), "--thresholds", str(rules_file), "--json", str(report)]) == 1
    rows = table(capsys.readouterr().out)
    assert rows[0] == [
        "RULE", "RUN", "TAG", "VALUE", "STEP", "FIRST", "CROSSINGS", "BOUND", "OVER", "RESULT"
    ]  # fmt: skip
    assert [(r[0], r[2], r[-1]) for r in rows[1:8]] == [
        ("grads", "gradients/norm/net.1", "PASS"),
        ("grads", "gradients/norm/net.2", "FAIL"),
        ("grads", "gradients/norm/net.10", "FAIL"),
        ("total", "health/grad_norm_total", "WARN"),
        ("stds", "activations/std/net.1", "PASS"),
        ("stds", "activations/std/net.2", "PASS"),
        ("stds", "activations/std/net.10", "PASS"),
    ]
    assert rows[-1] == "7 checks: 4 passed, 2 failed, 1 warned, 1 optional rules skipped".split()
    document = json.loads(report.read_text())
    assert document["counts"] == {"checks": 7, "failed": 2, "warned": 1, "skipped": 1}
    assert [(r["tag"], r["severity"], r["status"]) for r in document["results"]][2:4] == [
        ("gradients/norm/net.10", "error", "FAIL"),
        ("health/grad_norm_total", "warn", "WARN"),
    ]

    assert main(["check", str(logdir), "--thresholds", str(rules_file), "--failures-only"]) == 1
    rows = table(capsys.readouterr().out)
    assert [(r[2], r[-1]) for r in rows[1:4]] == [
        ("gradients/norm/net.2", "FAIL"),
        ("gradients/norm/net.10", "FAIL"),
        ("health/grad_norm_total", "WARN"),
    ]
    assert rows[4][0] == "SKIP"
    assert rows[-1][:8] == "7 checks: 4 passed, 2 failed, 1 warned,".split()


def test_a_failing_warn_rule_alone_passes(tmp_path, capsys, write_run):
    logdir = write_run(tmp_path / "run", LAYERS)
    file = tmp_path / "warn.toml"
    file.write_text('[[rule]]\ntag = "gradients/norm/*"\nmax = 10.0\nseverity = "warn"\n')
    assert main(["check", str(logdir), "--thresholds", str(file)]) == 0
    out = capsys.readouterr().out
    assert out.count("WARN") == 2 and "FAIL" not in out
    assert "3 checks: 1 passed, 0 failed, 2 warned" in out
    file.write_text('[[rule]]\ntag = "gradients/norm/*"\nmax = 10.0\nseverity = "fatal"\n')
    assert main(["check", str(logdir), "--thresholds", str(file)]) == 2
    assert "key 'severity' must be one of error, warn; got 'fatal'" in capsys.readouterr().err


def test_junit_is_valid_strict_junit_and_names_cases_by_tag(tmp_path, write_run):
    logdir = write_run(tmp_path / "run", LAYERS)
    rules, junit = tmp_path / "rules.toml", tmp_path / "j.xml"
    rules.write_text(RULES.replace('severity = "warn"\n', ""))  # defaults first
    assert main(["check", str(logdir), "--thresholds", str(rules), "--junit", str(junit)]) == 1
    root = ET.parse(junit).getroot()
    validate_junit(root)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "3", "0")
    suites = {suite.get("name"): suite for suite in root}
    assert list(suites) == ["grads", "total", "stds", "ics/*"]
    assert [case.get("name") for case in suites["grads"]] == [
        f"gradients/norm/{layer}" for layer in NUMERIC
    ]
    assert suites["ics/*"].find("testcase/skipped") is not None

    rules.write_text(RULES)  # "total" with severity = "warn": a passing case that says WARN
    assert main(["check", str(logdir), "--thresholds", str(rules), "--junit", str(junit)]) == 1
    root = ET.parse(junit).getroot()
    validate_junit(root)
    assert root.get("failures") == "2"
    (warned,) = root.find("testsuite[@name='total']")
    assert warned.find("failure") is None
    assert warned.find("system-out").text.startswith("WARN rule 'total'")


def test_junit_of_several_runs_names_cases_run_and_tag(tmp_path, write_run):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES.replace('severity = "warn"\n', ""))
    write_run(tmp_path / "logs" / "b", LAYERS)
    write_run(tmp_path / "logs" / "a", LAYERS)
    junit = tmp_path / "j.xml"
    assert main(["check", str(tmp_path / "logs"), "--thresholds", str(rules_file), "--junit",
                 str(junit)]) == 1  # fmt: skip
    root = ET.parse(junit).getroot()
    validate_junit(root)
    names = [case.get("name") for case in root.find("testsuite")]
    assert names == [f"{run}:gradients/norm/{layer}" for run in "ab" for layer in NUMERIC]


def test_junit_is_linear_in_the_number_of_rules():
    rules = [Rule(tag=f"gradients/norm/net.{i}", max=1.0) for i in range(20_000)]
    results = [(".", RuleResult(rule, rule.tag, 0.5, 0, True, 1)) for rule in rules]
    started = time.perf_counter()
    root = ET.fromstring(_check_junit(rules, results, [], seconds=1.0))
    elapsed = time.perf_counter() - started
    assert len(root) == 20_000 and root.get("tests") == "20000"
    assert elapsed < 10  # one scan of the results per rule took minutes at this size


def test_compare_failures_only_natural_order_and_summary_line(tmp_path, capsys, write_run):
    base = write_run(tmp_path / "base", LAYERS)
    changed = {tag: [(s, v * (3.0 if "net.1" in tag else 1.0)) for s, v in points]
               for tag, points in LAYERS.items()}  # fmt: skip
    cand = write_run(tmp_path / "cand", changed)
    assert main(["compare", str(base), str(cand)]) == 1
    rows = table(capsys.readouterr().out)
    tags = [row[0] for row in rows[2:-1]]
    assert tags == [f"{group}/{layer}" for group in ("activations/std", "gradients/norm")
                    for layer in NUMERIC] + ["health/grad_norm_total"]  # fmt: skip
    assert " ".join(rows[-1]).startswith("7 tags compared: 3 within tolerance, 4 differ")
    assert main(["compare", str(base), str(cand), "--failures-only"]) == 1
    rows = table(capsys.readouterr().out)
    assert [row[0] for row in rows[2:-1]] == [
        "activations/std/net.1",
        "activations/std/net.10",
        "gradients/norm/net.1",
        "gradients/norm/net.10",
    ]
    assert all(row[-1] == "DIFF" for row in rows[2:-1])
    assert " ".join(rows[-1]).startswith("7 tags compared: 3 within tolerance, 4 differ")


class LongNames(BoringModel):
    """Eleven blocks with the long qualified names of a real transformer stack."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict(
            {
                "transformer_encoder_stack": nn.ModuleList(
                    nn.ModuleDict({"feed_forward_projection": nn.Sequential(nn.Linear(32, 32))})
                    for _ in range(11)
                )
            }
        )

    def forward(self, x):
        for block in self.backbone["transformer_encoder_stack"]:
            x = torch.relu(block["feed_forward_projection"](x))
        return self.layer(x)


def test_summary_fits_100_columns_on_a_real_run_and_wide_prints_everything(
    make_trainer, events, tmp_path, capsys
):
    torch.manual_seed(0)
    make_trainer([LayerDiagnostics(every_n_steps=2)], max_steps=4).fit(LongNames())
    capsys.readouterr()  # the fit's own console output (its diagnosis table) is not the summary
    logdir = tmp_path / "run" / "version_0"
    assert main(["summary", str(logdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert lines[1].split() == ["LAYER", "ACT_STD", "ZERO_FRAC", "GRAD_NORM", "UPD_RATIO",
                                "BACKPROP"]  # fmt: skip
    names = [  # natural order: .2 before .10
        *(f"backbone.transformer_encoder_stack.{i}.feed_forward_projection.0" for i in range(11)),
        "layer",
    ]
    rows = [line.split() for line in lines[2 : 2 + len(names)]]
    scalars = events(logdir)
    for name, row in zip(names, rows, strict=True):
        assert len(name) <= 40 or row[0].startswith("...")
        assert name.endswith(row[0].removeprefix("..."))
        logged = scalars.Scalars(f"activations/std/{name}")[-1].value
        assert float(row[1]) == pytest.approx(logged, rel=5e-4)
    assert lines[2 + len(names)].startswith("(+")  # the columns left out, and how to see them

    assert main(["summary", str(logdir), "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    header = wide[1].split()
    assert {"activations/std", "activations/kurtosis", "parameters/norm"} <= set(header)
    assert [line.split()[0] for line in wide[2 : 2 + len(names)]] == names


def test_check_rows_show_the_first_crossing_and_how_many(tmp_path, capsys, write_run):
    logdir = write_run(tmp_path / "run", {"gradients/norm/net.3": [(0, 1.0), (1, 20.0), (2, 50.0),
                                                                   (3, 5.0)]})  # fmt: skip
    rules, report = tmp_path / "rules.toml", tmp_path / "r.json"
    rules.write_text('[[rule]]\ntag = "gradients/norm/*"\nmax = 10.0\n')
    assert main(["check", str(logdir), "--thresholds", str(rules), "--json", str(report)]) == 1
    rows = table(capsys.readouterr().out)
    assert rows[1] == ["gradients/norm/*", ".", "gradients/norm/net.3", "50", "2", "1", "2",
                       "max", "10", "all", "FAIL"]  # fmt: skip
    (result,) = json.loads(report.read_text())["results"]
    assert (result["step"], result["first_step"], result["crossings"]) == (2, 1, 2)
