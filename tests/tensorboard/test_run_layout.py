"""How ``check`` groups event files into runs: resumes, nested writer folders, sibling runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.cli import main

HEALTH = '[[rule]]\ntag = "health/*"\nmax = 10.0\nover = "last"\n'
GRADS = '[[rule]]\ntag = "gradients/norm/*"\nmax = 10.0\n'


def _rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def _write(directory: Path, points: dict[str, list[tuple[int, float]]]) -> Path:
    """One SummaryWriter session into ``directory``; returns the event file it created."""
    before = set(directory.glob("events.out.tfevents.*"))
    with SummaryWriter(str(directory)) as writer:
        for tag, series in points.items():
            for step, value in series:
                writer.add_scalar(tag, value, step)
    (path,) = set(directory.glob("events.out.tfevents.*")) - before
    return path


def _check(logdir: Path, rules: Path, *extra: str) -> tuple[int, dict]:
    report = logdir.parent / "report.json"
    code = main(["check", str(logdir), "--thresholds", str(rules), "--json", str(report), *extra])
    return code, json.loads(report.read_text()) if code != 2 else {}


# ----------------------------------------------------------------------------- resumes


@pytest.mark.parametrize("other", ["hp_metric_at_0", "unrelated_tag_at_150"])
def test_a_resume_is_one_run_whatever_other_tags_the_files_log(tmp_path, other):
    run = tmp_path / "run"
    first = {"health/grad_norm_total": [(s, 1.0) for s in range(100)]}
    second = {"health/grad_norm_total": [(s, 20.0 if s == 199 else 1.0) for s in range(100, 200)]}
    if other == "hp_metric_at_0":  # Lightning logs hp_metric = -1 at step 0 on every fit
        first["hp_metric"] = second["hp_metric"] = [(0, -1.0)]
        rules = _rules(tmp_path, HEALTH + '[[rule]]\ntag = "hp_metric"\nmax = 0.0\n')
    else:
        first["other"] = [(150, 0.0)]
        rules = _rules(tmp_path, HEALTH)
    _write(run, first)
    _write(run, second)
    code, report = _check(run, rules)
    assert code == 1
    verdict = {r["tag"]: (r["value"], r["step"], r["passed"]) for r in report["results"]}
    assert verdict["health/grad_norm_total"] == (20.0, 199, False)
    if other == "hp_metric_at_0":
        assert verdict["hp_metric"] == (-1.0, 0, True)


def test_an_overlap_names_the_overlapping_tag_and_its_own_steps(tmp_path, capsys):
    run = tmp_path / "run"
    first = _write(run, {"health/a": [(s, 1.0) for s in range(0, 50)], "health/b": [(0, 1.0)]})
    second = _write(
        run,
        {
            "health/a": [(s, 1.0) for s in range(50, 90)],
            "health/b": [(s, 1.0) for s in range(0, 300)],
        },
    )
    assert main(["check", str(run), "--thresholds", str(_rules(tmp_path, HEALTH))]) == 2
    err = capsys.readouterr().err
    assert (
        f"'{first.name}' (steps 0-0) and '{second.name}' (steps 0-299) both log 'health/b'" in err
    )
