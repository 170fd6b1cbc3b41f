"""``ln-diagnostics diagnose`` and ``check`` with finding rules, on event files written with
TensorBoard's own ``SummaryWriter``."""

import json

import pytest
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.cli import main
from ln_diagnostics.diagnose import LayerInfo, RunInfo
from ln_diagnostics.tensorboard.diagnosis import write_run_info

NAMES = ["in", "h0", "h1", "h2", "out"]


def write_run(path, norms, *, record=True, steps=(0, 10), extra=None):
    """A run whose hidden stack h0..h2 has the given backprop norms at every step."""
    with SummaryWriter(str(path)) as writer:
        if record:
            layers = tuple(LayerInfo(n, "Linear", True) for n in NAMES)
            write_run_info(writer, RunInfo(layers, 16), step=0)
        for step in steps:
            for name in NAMES:
                writer.add_scalar(f"parameters/norm/{name}", 1.0, step)
            for name, norm in zip(NAMES[1:4], norms, strict=True):
                writer.add_scalar(f"backprop/norm/{name}", norm, step)
            writer.add_scalar("health/grad_norm_total", 1.0, step)
            for tag, value in (extra or {}).items():
                writer.add_scalar(tag, value, step)


@pytest.fixture
def logdir(tmp_path):
    write_run(tmp_path / "runs" / "sick", [1e-5, 1e-3, 1e-1])
    write_run(tmp_path / "runs" / "well", [1.0, 1.0, 1.0])
    return tmp_path / "runs"


@pytest.mark.parametrize(("fail_on", "code"), [(None, 0), ("error", 1), ("warning", 1)])
def test_exit_codes(logdir, capsys, fail_on, code):
    argv = ["diagnose", str(logdir)] + (["--fail-on", fail_on] if fail_on else [])
    assert main(argv) == code
    out = capsys.readouterr().out
    assert "run: sick\n" in out and "vanishing_gradients" in out
    assert "run: well\n" in out and "healthy" in out


def test_healthy_run_passes_fail_on_warning(logdir):
    assert main(["diagnose", str(logdir / "well"), "--fail-on", "warning"]) == 0


def test_json_report(logdir, tmp_path):
    out = tmp_path / "diagnosis.json"
    assert main(["diagnose", str(logdir), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = {run["run"]: run for run in report["runs"]}
    assert runs["well"]["worst"] == "info"
    (finding,) = runs["sick"]["findings"]
    assert finding["kind"] == "vanishing_gradients"
    assert (finding["layer"], finding["first_step"], finding["last_step"]) == ("h0", 0, 10)
    assert finding["value"] == pytest.approx(-4.0, abs=1e-6)
    assert runs["sick"]["layers_source"] == "record"


def test_without_the_record_the_tag_order_is_used(tmp_path, capsys):
    write_run(tmp_path, [1e-5, 1e-3, 1e-1], record=False)
    assert main(["diagnose", str(tmp_path), "--fail-on", "error"]) == 1
    out = capsys.readouterr().out
    assert "run: . (layers from tag order: no record)" in out
    assert "vanishing_gradients" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "log directory '{p}/missing' does not exist"),
        (lambda p: (p / "missing").mkdir(), "no TensorBoard event files"),
        (
            lambda p: (
                (p / "missing").mkdir(),
                (p / "missing" / "events.out.tfevents.1").write_bytes(b"garbage" * 10),
            ),
            "cannot read event file '{p}/missing/events.out.tfevents.1'",
        ),
    ],
    ids=["missing", "empty", "corrupt"],
)
def test_bad_input_exits_2(tmp_path, capsys, setup, message):
    setup(tmp_path)
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    assert message.format(p=tmp_path) in capsys.readouterr().err


def test_a_run_without_diagnostics_exits_2(tmp_path, capsys):
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "holds no ln-diagnostics statistic" in capsys.readouterr().err


def test_a_broken_record_exits_2(tmp_path, capsys):
    write_run(tmp_path, [1.0, 1.0, 1.0], record=False)
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_text("diagnostics/layers", "{oops", 0)
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "text record 'diagnostics/layers' is invalid" in capsys.readouterr().err


def test_check_with_a_finding_rule(logdir, tmp_path, capsys):
    rules = tmp_path / "t.toml"
    rules.write_text('[[rule]]\nname = "no new finding"\nfinding = "*"\n')
    assert main(["check", str(logdir / "well"), "--thresholds", str(rules)]) == 0
    assert main(["check", str(logdir), "--thresholds", str(rules)]) == 1
    out = capsys.readouterr().out
    assert "vanishing_gradients h0" in out and "no finding" in out and "FAIL" in out


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('finding = "vanishing"', "key 'finding' must be a finding kind or a glob over them"),
        ('finding = "*"\nmax = 1', "a 'finding' rule has no 'max'"),
        ('finding = "*"\nafter_step = -1', "key 'after_step' must be a non-negative integer"),
    ],
)
def test_bad_finding_rules_exit_2(logdir, tmp_path, capsys, rule, message):
    rules = tmp_path / "t.toml"
    rules.write_text(f"[[rule]]\n{rule}\n")
    assert main(["check", str(logdir), "--thresholds", str(rules)]) == 2
    assert message in capsys.readouterr().err


def test_truncated_file_exits_2_unless_allow_partial(logdir, tmp_path, capsys):
    (path,) = (logdir / "sick").glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes()[:-5])  # inside the last record: a run still writing
    assert main(["diagnose", str(logdir), "--fail-on", "error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ln-diagnostics diagnose: error: ")
    assert f"event file '{path}' ends inside the record at byte" in err
    assert "--allow-partial" in err

    out = tmp_path / "partial.json"
    argv = ["diagnose", str(logdir), "--allow-partial", "--fail-on", "error", "--json", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"ln-diagnostics diagnose: note: '{path}' ends inside the record at byte" in captured.err
    runs = {run["run"]: run for run in json.loads(out.read_text())["runs"]}
    assert [f["kind"] for f in runs["sick"]["findings"]] == ["vanishing_gradients"]

    rules = tmp_path / "t.toml"  # check's finding rules read the files the same way
    rules.write_text('[[rule]]\nfinding = "*"\n')
    assert main(["check", str(logdir), "--thresholds", str(rules)]) == 2
    assert main(["check", str(logdir), "--thresholds", str(rules), "--allow-partial"]) == 1


def test_a_corrupt_record_exits_2_even_with_allow_partial(logdir, capsys):
    (path,) = (logdir / "sick").glob("events.out.tfevents.*")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    for extra in ([], ["--allow-partial"]):
        assert main(["diagnose", str(logdir), *extra]) == 2
        assert f"event file '{path}' is corrupt" in capsys.readouterr().err


def test_overlapping_files_exit_2_unless_merge(tmp_path, capsys):
    write_run(tmp_path, [1e-5, 1e-3, 1e-1])
    write_run(tmp_path, [1e-5, 1e-3, 1e-1], record=False)  # a second file, the same steps
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "event files whose steps overlap" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path), "--merge", "--fail-on", "error"]) == 1
    assert "vanishing_gradients" in capsys.readouterr().out


def test_the_text_fits_the_terminal(tmp_path, capsys, monkeypatch):
    names = [f"encoder.layers.{i}.self_attn.out_proj" for i in range(6)]
    with SummaryWriter(str(tmp_path)) as writer:
        write_run_info(writer, RunInfo(tuple(LayerInfo(n, "Linear", True) for n in names)), step=0)
        for step in (0, 10):
            for k, name in enumerate(names):
                writer.add_scalar(f"backprop/norm/{name}", 10.0 ** (k - 6), step)
    for width in (80, 120):
        monkeypatch.setenv("COLUMNS", str(width))
        assert main(["diagnose", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "vanishing_gradients" in out and "add LayerNorm" in out
        assert max(len(line) for line in out.splitlines()) <= width
