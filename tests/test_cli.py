"""``ln-diagnostics check | compare | summary`` on real TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ln_diagnostics.cli import main

THRESHOLDS = """\
[[rule]]
name = "no exploding gradients"
tag = "gradients/norm/*"
max = 10.0

[[rule]]
name = "total gradient"
tag = "health/grad_norm_total"
max = 100.0
over = "mean"
"""


def _run_scalars(scale: float = 1.0, explode: bool = False) -> dict[str, list[tuple[int, float]]]:
    return {
        "activations/std/net.0": [(s, 1.0 * scale) for s in range(4)],
        "gradients/norm/net.0": [(s, 2.0 * scale) for s in range(4)],
        "gradients/norm/net.2": [(0, 1.0), (1, 50.0 if explode else 3.0), (2, 2.0), (3, 1.0)],
        "activations/std/net.2": [(s, 0.5 * scale) for s in range(4)],
        "health/grad_norm_total": [(s, 3.0 * scale) for s in range(4)],
        "train_loss": [(s, 1.0 / (s + 1)) for s in range(4)],
    }


@pytest.fixture
def thresholds(tmp_path: Path) -> Path:
    file = tmp_path / "thresholds.toml"
    file.write_text(THRESHOLDS)
    return file


def _check(logdir: Path, thresholds: Path, *extra: str) -> int:
    return main(["check", str(logdir), "--thresholds", str(thresholds), *extra])


def test_check_pass(tmp_path, thresholds, capsys, write_run):
    logdir = write_run(tmp_path / "logs", _run_scalars())
    assert _check(logdir, thresholds) == 0
    out = capsys.readouterr().out
    assert "no exploding gradients  .    gradients/norm/net.0" in out
    assert "FAIL" not in out
    assert "3 checks: 3 passed, 0 failed" in out


def test_check_fail_with_json_and_junit(tmp_path, thresholds, capsys, write_run):
    write_run(tmp_path / "logs" / "good", _run_scalars())
    write_run(tmp_path / "logs" / "bad", _run_scalars(explode=True))
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    code = _check(tmp_path / "logs", thresholds, "--json", str(report), "--junit", str(junit))
    assert code == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert len(failing) == 1
    assert failing[0].split() == [
        "no", "exploding", "gradients", "bad", "gradients/norm/net.2", "50", "1", "1", "1", "max",
        "10", "all", "FAIL",
    ]  # fmt: skip
    assert "6 checks: 5 passed, 1 failed" in out

    document = json.loads(report.read_text())
    assert document["passed"] is False
    assert document["counts"] == {"checks": 6, "failed": 1, "warned": 0, "skipped": 0}
    (failed,) = [r for r in document["results"] if not r["passed"]]
    assert (failed["run"], failed["tag"], failed["value"], failed["step"]) == (
        "bad",
        "gradients/norm/net.2",
        50.0,
        1,
    )

    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("6", "1")
    assert [suite.get("name") for suite in root] == ["no exploding gradients", "total gradient"]
    failures = root.findall(".//failure")
    assert len(failures) == 1
    assert failures[0].get("message") == "gradients/norm/net.2 = 50 at step 1 (max 10, over all)"
    assert len(root.findall(".//testcase")) == 6


def test_check_nan_fails_and_is_reported(tmp_path, thresholds, capsys, write_run):
    scalars = _run_scalars()
    scalars["health/grad_norm_total"][2] = (2, math.nan)
    logdir = write_run(tmp_path / "logs", scalars)
    report = tmp_path / "r.json"
    assert _check(logdir, thresholds, "--json", str(report)) == 1
    assert "total gradient          .    health/grad_norm_total  nan" in capsys.readouterr().out
    (failed,) = [r for r in json.loads(report.read_text())["results"] if not r["passed"]]
    assert (failed["value"], failed["step"]) == ("nan", 2)


def test_check_json_reports_infinite_bounds_as_strings(tmp_path, write_run):
    """TOML allows ``inf``; JSON does not: the bound is written as a string, not a crash."""
    logdir = write_run(tmp_path / "logs", _run_scalars())
    file = tmp_path / "t.toml"
    file.write_text('[[rule]]\ntag = "gradients/norm/*"\nmin = -inf\nmax = 10.0\n')
    report = tmp_path / "r.json"
    assert _check(logdir, file, "--json", str(report)) == 0
    results = json.loads(report.read_text())["results"]
    assert {(r["min"], r["max"]) for r in results} == {("-inf", 10.0)}


def test_check_optional_rule_is_skipped(tmp_path, capsys, write_run):
    logdir = write_run(tmp_path / "logs", _run_scalars())
    file = tmp_path / "t.toml"
    file.write_text(THRESHOLDS + '\n[[rule]]\ntag = "ics/*"\nmax = 1.0\noptional = true\n')
    junit = tmp_path / "j.xml"
    assert _check(logdir, file, "--junit", str(junit)) == 0
    assert "SKIP rule 'ics/*' matches no scalar tag" in capsys.readouterr().out
    root = ET.parse(junit).getroot()
    assert root.get("skipped") is None  # not an attribute of <testsuites> in the strict schema
    assert [suite.get("skipped") for suite in root] == ["0", "0", "1"]


BAD_RULES = [
    (
        '[[rule]]\ntag = "gradients/norm/*"\nmax = \n',
        r"is not valid TOML: .* \(at line 3, column 7\)",
    ),
    (
        '[[rule]]\ntag = "gradients/norm/*"\nmx = 1.0\n',
        r"t\.toml:1: rule 1: unknown key 'mx'; valid keys: name, tag, min, max, over, after_step",
    ),
    (
        '[[rule]]\ntag = "gradients/norm/*"\nmax = "10"\n',
        r"key 'max' must be a number; got str '10'",
    ),
    (
        '[[rule]]\ntag = "gradients/norm/*"\nmin = 5\nmax = 1\n',
        r"'min' must not exceed 'max'; got min = 5 > max = 1",
    ),
    (
        '[[rule]]\ntag = "gradients/norm/*"\nmax = 1\nover = "p99"\n',
        r"key 'over' must be one of all, last, mean, max, min; got 'p99'",
    ),
    (
        '[[rule]]\ntag = "gradients/norm/*"\n',
        r"expected at least one of 'min' or 'max'; got neither",
    ),
    (
        '[[rule]]\ntag = "gradients/nrom/*"\nmax = 1\n',
        r"rule 'gradients/nrom/\*' matches no scalar tag; closest: gradients/norm/net.0, "
        r"gradients/norm/net.2 \(searched run '.' under '.*logs'\); fix the glob or set optional",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_RULES)
def test_check_bad_threshold_file(tmp_path, capsys, text, message, write_run):
    logdir = write_run(tmp_path / "logs", _run_scalars())
    file = tmp_path / "t.toml"
    file.write_text(text)
    assert _check(logdir, file) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ln-diagnostics check: error: ")
    assert re.search(message, lines[0]), lines[0]


def test_check_bad_log_directories(tmp_path, thresholds, capsys):
    cases = {
        tmp_path / "missing": "log directory '{}' does not exist",
        thresholds: "'{}' is not a directory",
        tmp_path / "empty": "no TensorBoard event files (events.out.tfevents.*) under '{}'",
    }
    (tmp_path / "empty").mkdir()
    for path, message in cases.items():
        assert _check(path, thresholds) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.format(path) in err
    bad = tmp_path / "corrupt" / "events.out.tfevents.xxx"
    bad.parent.mkdir()
    bad.write_bytes(b"garbage" * 20)
    assert _check(bad.parent, thresholds) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot read event file '{bad}': not a TensorBoard event file" in err
    assert _check(tmp_path / "missing", tmp_path / "none.toml") == 2
    assert "threshold file" in capsys.readouterr().err


def test_check_unwritable_report(tmp_path, thresholds, capsys, write_run):
    logdir = write_run(tmp_path / "logs", _run_scalars())
    assert _check(logdir, thresholds, "--json", str(tmp_path / "no" / "dir" / "r.json")) == 2
    assert "cannot write the JSON report to" in capsys.readouterr().err


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert main(["check", "logs"]) == 2
    assert "--thresholds" in capsys.readouterr().err
    assert main(["compare", "a", "b", "--rtol", "-1"]) == 2
    assert "expected a non-negative number; got '-1'" in capsys.readouterr().err
    for command, example in [
        ("check", "ln-diagnostics check lightning_logs --thresholds"),
        ("compare", "ln-diagnostics compare runs/main runs/feature"),
        ("summary", "ln-diagnostics summary lightning_logs"),
    ]:
        assert main([command, "--help"]) == 0
        assert example in capsys.readouterr().out


def test_compare(tmp_path, capsys, write_run):
    base = write_run(tmp_path / "base", _run_scalars())
    same = write_run(tmp_path / "same", _run_scalars(scale=1.05))
    cand_scalars = _run_scalars(scale=2.0)
    cand_scalars["gradients/norm/net.4"] = [(0, 1.0)]
    del cand_scalars["train_loss"]
    cand = write_run(tmp_path / "cand", cand_scalars)

    assert main(["compare", str(base), str(same)]) == 0
    assert "6 tags compared: 6 within tolerance, 0 differ" in capsys.readouterr().out

    report = tmp_path / "c.json"
    assert main(["compare", str(base), str(cand), "--json", str(report)]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert rows["gradients/norm/net.0"] == ["2", "4", "+2", "+100%", "DIFF"]
    assert rows["gradients/norm/net.2"] == ["1", "1", "+0", "+0%", "ok"]
    assert "only in baseline (1): train_loss" in out
    assert "only in candidate (1): gradients/norm/net.4" in out
    assert "5 tags compared: 1 within tolerance, 4 differ" in out
    document = json.loads(report.read_text())
    assert (document["compared"], document["differing"], document["passed"]) == (5, 4, False)

    assert main(["compare", str(base), str(cand), "--tags", "gradients/norm/net.2"]) == 0
    assert main(["compare", str(base), str(cand), "--tags", "activations/*", "--rtol", "1"]) == 0
    assert main(["compare", str(base), str(cand), "--tags", "health/*", "--atol", "2.5"]) == 1
    capsys.readouterr()
    assert main(["compare", str(base), str(cand), "--over", "mean", "--tags", "train*"]) == 2
    assert "have no scalar tag in common among --tags train*" in capsys.readouterr().err
    assert main(["compare", str(base), str(cand), "--tags", "gradients/nrm/*"]) == 2
    assert "--tags 'gradients/nrm/*' matches no scalar tag on either side; closest:" in (
        capsys.readouterr().err
    )


def test_compare_several_runs_are_matched_by_path(tmp_path, capsys, write_run):
    write_run(tmp_path / "a" / "x", _run_scalars())
    write_run(tmp_path / "a" / "y", _run_scalars())
    write_run(tmp_path / "b" / "x", _run_scalars(explode=True))
    write_run(tmp_path / "b" / "z", _run_scalars())
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--over", "mean"]) == 1
    out = capsys.readouterr().out
    assert "run x: mean value per tag" in out
    assert "run only in baseline, not compared: y" in out
    assert "run only in candidate, not compared: z" in out
    shutil.rmtree(tmp_path / "b" / "x")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no run to compare" in err and "holds x, y" in err and "matched by their path" in err


def test_summary(tmp_path, capsys, write_run):
    scalars = _run_scalars()
    scalars["val/activations/std/net.0"] = [(3, 7.0)]
    logdir = write_run(tmp_path / "logs", scalars)
    assert main(["summary", str(logdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run . (latest values, last step 3)"
    assert lines[1].split() == ["LAYER", "ACT_STD", "GRAD_NORM"]
    assert lines[2].split() == ["net.0", "1", "2"]
    assert lines[3].split() == ["net.2", "0.5", "1"]
    assert lines[4].split() == ["val/net.0", "7", "-"]
    assert lines[5].split() == ["HEALTH", "VALUE", "STEP"]
    assert lines[6].split() == ["health/grad_norm_total", "3", "3"]
    assert lines[8].split() == ["train_loss", "0.25", "3"]
    assert main(["summary", str(tmp_path / "missing")]) == 2


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


def test_subprocess_entry_points(tmp_path, thresholds, write_run):
    logdir = write_run(tmp_path / "logs", _run_scalars(explode=True))
    command = ["check", str(logdir), "--thresholds", str(thresholds)]
    result = subprocess.run(
        [sys.executable, "-m", "ln_diagnostics", *command],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout
    script = Path(sys.executable).with_name("ln-diagnostics")
    if not script.exists():
        pytest.skip("the ln-diagnostics console script is not installed (pip install -e .)")
    result = subprocess.run(
        [str(script), "summary", str(tmp_path / "missing")], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr
        == f"ln-diagnostics summary: error: log directory '{tmp_path / 'missing'}' does not exist\n"
    )
    result = subprocess.run([str(script), *command], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly_and_never_reads_as_a_pass(tmp_path, write_run):
    scalars = {f"activations/std/net.{i}": [(0, 1.0)] for i in range(4000)}
    logdir = write_run(tmp_path / "logs", scalars)
    process = subprocess.Popen(
        [sys.executable, "-m", "ln_diagnostics", "summary", str(logdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()  # like `| head -1`: read one line, then hang up
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
