"""Inputs that used to give a wrong verdict without a word: each must now exit 2 and say why.

Every case starts from real event files written by ``SummaryWriter`` and checks the exit code and
the one-line message of ``ln-diagnostics check`` (run with default options first).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.cli import main

RULE = '[[rule]]\nname = "grad"\ntag = "gradients/norm/*"\nmax = 10.0\n'
TAG = "gradients/norm/net.0"


def _write(directory: Path, points: list[tuple[int, float]], tag: str = TAG) -> Path:
    """One SummaryWriter run; returns its event file (one record per point after the header)."""
    before = set(directory.glob("events.out.tfevents.*"))
    with SummaryWriter(str(directory)) as writer:
        for step, value in points:
            writer.add_scalar(tag, value, step)
    (path,) = set(directory.glob("events.out.tfevents.*")) - before
    return path


def _healthy(steps: range = range(20), explode_at: int | None = None) -> list[tuple[int, float]]:
    return [(step, 50.0 if step == explode_at else 1.0 + step / 100) for step in steps]


def _record_offsets(path: Path) -> list[int]:
    """Byte offset of every TFRecord frame, walked from the length fields alone."""
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + 4 + struct.unpack_from("<Q", data, pos)[0] + 4
    return offsets


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    file = tmp_path / "rules.toml"
    file.write_text(RULE)
    return file


def _check(logdir: Path, rules: Path, *extra: str) -> int:
    return main(["check", str(logdir), "--thresholds", str(rules), *extra])


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ln-diagnostics check: error: "), err
    assert "b'/" not in err  # paths print as text, not as bytes
    return err


# ----------------------------------------------------------------------------- corruption


@pytest.mark.parametrize(
    ("where", "why"),
    [
        (12 + 3, "its data fails the CRC check"),  # a bit inside the Event proto
        (2, "its length fails the CRC check"),  # a bit of the length field
        (9, "its length fails the CRC check"),  # a bit of the length's CRC
    ],
)
def test_a_flipped_bit_mid_file_is_exit_2_naming_file_and_offset(
    tmp_path, rules, capsys, where, why
):
    # The explosion at step 15 lies after the damage: reading up to the damage only would pass.
    path = _write(tmp_path / "logs", _healthy(explode_at=15))
    assert _check(tmp_path / "logs", rules) == 1
    capsys.readouterr()
    offset = _record_offsets(path)[1 + 7]  # the record of step 7 (record 0 is the header)
    _flip(path, offset + where)
    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    assert f"event file '{path}' is corrupt: the record at byte {offset}: {why}" in err
    assert _check(tmp_path / "logs", rules, "--allow-partial") == 2  # damage is not partial


def test_a_bad_data_crc_field_is_caught(tmp_path, rules, capsys):
    path = _write(tmp_path / "logs", _healthy())
    offsets = _record_offsets(path)
    _flip(path, offsets[4] - 1)  # the last byte of record 3's data CRC
    assert _check(tmp_path / "logs", rules) == 2
    assert f"the record at byte {offsets[3]}: its data fails the CRC check" in _one_error(capsys)


def test_a_corrupt_step_0_record_says_corrupt(tmp_path, rules, capsys):
    path = _write(tmp_path / "logs", _healthy())
    offset = _record_offsets(path)[1]
    _flip(path, offset + 14)
    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    assert f"is corrupt: the record at byte {offset}" in err
    assert "hold no scalars" not in err


@pytest.mark.parametrize("into", [5, 20])  # inside the length header / inside the data
def test_a_truncated_last_record_is_reported_and_allow_partial_reads_up_to_it(
    tmp_path, rules, capsys, into
):
    path = _write(tmp_path / "logs", _healthy(explode_at=15))
    offset = _record_offsets(path)[1 + 10]
    path.write_bytes(path.read_bytes()[: offset + into])

    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    assert f"event file '{path}' ends inside the record at byte {offset} ({into} bytes" in err
    assert "--allow-partial" in err

    # Steps 0-9 survive, the explosion at 15 is gone: the verdict is by the rules on those.
    report = tmp_path / "r.json"
    assert _check(tmp_path / "logs", rules, "--allow-partial", "--json", str(report)) == 0
    captured = capsys.readouterr()
    assert f"note: '{path}' ends inside the record at byte {offset}" in captured.err
    (result,) = json.loads(report.read_text())["results"]
    assert (result["points"], result["value"]) == (10, pytest.approx(1.09))

    _write(tmp_path / "live", _healthy(explode_at=3))
    (live,) = (tmp_path / "live").glob("events.*")
    live.write_bytes(live.read_bytes()[: _record_offsets(live)[1 + 10] + into])
    assert _check(tmp_path / "live", rules, "--allow-partial") == 1


# ----------------------------------------------------------------------------- unreadable input


def _deny(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make ``path`` unreadable to the reader, also when the tests run as root.

    ``chmod 000`` is what a user does, but root reads through it (CAP_DAC_OVERRIDE), and a child
    process cannot drop to another user here (the interpreter lives under /root). So as root the
    calls files are reached through, ``os.scandir`` for directories and ``open``/``io.open`` for
    event files, are made to fail for this one path with the very error the kernel gives an
    unprivileged user: ``PermissionError(EACCES)``. Everything else reads normally.
    """
    path.chmod(0)
    monkeypatch.chdir(path.parent)  # pytest's own bookkeeping never lists this path
    if os.geteuid() != 0:
        return
    denied = os.fspath(path)
    real_scandir, real_open = os.scandir, builtins.open

    def refuse(target: object) -> None:
        if os.fsdecode(target) == denied:  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)

    def scandir(target: object = ".") -> object:
        refuse(target)
        return real_scandir(target)  # type: ignore[arg-type]

    def open_(target: object, *args: object, **kwargs: object) -> object:
        if isinstance(target, (str, bytes, os.PathLike)):
            refuse(target)
        return real_open(target, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # TensorBoard's file system layer opens through it


@pytest.mark.parametrize("what", ["run directory", "event file"])
def test_an_unreadable_run_is_exit_2_naming_it(tmp_path, rules, capsys, monkeypatch, what):
    _write(tmp_path / "logs" / "a", _healthy())
    b_file = _write(tmp_path / "logs" / "b", _healthy(explode_at=4))
    assert _check(tmp_path / "logs", rules) == 1
    capsys.readouterr()
    target = tmp_path / "logs" / "b" if what == "run directory" else b_file
    _deny(monkeypatch, target)
    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    kind = "directory" if what == "run directory" else "event file"
    assert f"cannot read {kind} '{target}': Permission denied" in err


def test_non_files_named_like_event_files_and_symlink_loops_are_named(tmp_path, rules, capsys):
    _write(tmp_path / "logs" / "a", _healthy())
    fifo = tmp_path / "logs" / "b" / "events.out.tfevents.1.host"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it would block forever: it must never be opened
    assert _check(tmp_path / "logs", rules) == 2
    assert f"cannot read event file '{fifo}': it is not a regular file" in _one_error(capsys)
    fifo.unlink()
    fifo.mkdir()
    assert _check(tmp_path / "logs", rules) == 2
    assert f"'{fifo}': it is a directory" in _one_error(capsys)
    fifo.rmdir()
    fifo.symlink_to(tmp_path / "gone")
    assert _check(tmp_path / "logs", rules) == 2
    assert f"'{fifo}': a broken symlink" in _one_error(capsys)
    fifo.unlink()

    (tmp_path / "logs" / "b" / "back").symlink_to(tmp_path / "logs")
    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    assert f"'{tmp_path / 'logs' / 'b' / 'back'}' is a symlink loop: it leads back to" in err
    (tmp_path / "logs" / "b" / "back").unlink()

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert _check(loop, rules) == 2
    assert f"cannot read log directory '{loop}': a symlink loop" in _one_error(capsys)


def test_a_symlinked_run_is_followed_not_skipped(tmp_path, rules, capsys):
    _write(tmp_path / "logs" / "a", _healthy())
    _write(tmp_path / "elsewhere", _healthy(explode_at=2))
    (tmp_path / "logs" / "b").symlink_to(tmp_path / "elsewhere")
    assert _check(tmp_path / "logs", rules) == 1
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines() if "FAIL" in line] == [
        "b"
    ]


# ----------------------------------------------------------------------------- per-run matching


def test_a_rule_must_match_in_every_run(tmp_path, rules, capsys):
    _write(tmp_path / "logs" / "a", _healthy())
    _write(tmp_path / "logs" / "b", [(step, 1.0) for step in range(5)], tag="train/loss")
    assert _check(tmp_path / "logs", rules) == 2
    err = _one_error(capsys)
    assert "rule 'grad' matches no scalar tag; tags present: train/loss" in err
    assert f"(searched run 'b' under '{tmp_path / 'logs'}'); fix the glob or set optional" in err

    (tmp_path / "optional.toml").write_text(RULE + "optional = true\n")
    assert _check(tmp_path / "logs", tmp_path / "optional.toml") == 0
    out = capsys.readouterr().out
    assert "SKIP rule 'grad' matches no scalar tag; tags present: train/loss (searched run 'b'" in (
        out
    )
    assert "1 checks: 1 passed, 0 failed, 1 optional rules skipped" in out


# ----------------------------------------------------------------------------- two runs, one dir


def test_two_runs_in_one_directory_are_refused_and_merge_reads_them_as_one(tmp_path, capsys):
    logdir = tmp_path / "logs"
    first = _write(logdir, [(step, 1.0) for step in range(10)])
    second = _write(logdir, [(step, 3.0) for step in range(5, 15)])
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\ntag = "gradients/norm/*"\nmax = 2.5\nover = "last"\n'
        '[[rule]]\ntag = "gradients/norm/*"\nmax = 2.5\nover = "mean"\n'
    )
    assert _check(logdir, rules) == 2
    err = _one_error(capsys)
    assert f"'{logdir}' holds event files whose steps overlap: '{first.name}' (steps 0-9)" in err
    assert f"'{second.name}' (steps 5-14) both log '{TAG}'" in err
    assert "pass --merge if the later file resumes the earlier one" in err

    report = tmp_path / "r.json"
    assert _check(logdir, rules, "--merge", "--json", str(report)) == 1
    last, mean = json.loads(report.read_text())["results"]
    assert (last["value"], last["step"], last["passed"]) == (3.0, 14, False)
    assert (mean["value"], mean["points"], mean["passed"]) == (2.0, 20, True)  # 10*1 + 10*3


def test_a_run_resumed_into_its_directory_without_overlap_is_one_series(tmp_path, rules, capsys):
    logdir = tmp_path / "logs"
    _write(logdir, _healthy(range(0, 10)))
    _write(logdir, _healthy(range(10, 20), explode_at=17))
    (tmp_path / "other.toml").write_text('[[rule]]\ntag = "other/*"\nmax = 1.0\noptional = true\n')
    assert _check(logdir, rules) == 1
    out = capsys.readouterr().out
    assert "grad  .    gradients/norm/net.0  50     17" in out
    # Another writer's tags at the same steps are not a second run of these tags.
    _write(logdir, [(step, 0.5) for step in range(20)], tag="other/x")
    assert _check(logdir, tmp_path / "other.toml") == 0


# ----------------------------------------------------------------------------- threshold file


def test_a_huge_threshold_file_is_exit_2(tmp_path, rules, capsys):
    _write(tmp_path / "logs", _healthy())
    big = tmp_path / "big.toml"
    big.write_text(RULE + "#" * (16 << 20) + "\n")
    assert _check(tmp_path / "logs", big) == 2
    assert f"threshold file '{big}' is larger than 16 MiB" in _one_error(capsys)


def test_dev_zero_as_threshold_file_is_exit_2_not_a_memory_error(tmp_path):
    _write(tmp_path / "logs", _healthy())

    def limit_memory() -> None:  # so that a reader that slurps /dev/zero fails fast, not the host
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "ln_diagnostics", "check", str(tmp_path / "logs"),
         "--thresholds", "/dev/zero"],
        capture_output=True, text=True, env=env, preexec_fn=limit_memory, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr == (
        "ln-diagnostics check: error: threshold file '/dev/zero' is larger than 16 MiB; "
        "expected a TOML file of [[rule]] tables (is it the right path?)\n"
    )


@pytest.mark.parametrize("extra", ["add_scalars", "add_hparams"])
def test_sub_folders_of_a_run_answer_to_the_run_that_holds_them(tmp_path, capsys, extra):
    """SummaryWriter.add_scalars/add_hparams write event files in sub-folders of the run: those
    are parts of the run, not runs that must match every rule on their own."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "logs" / "run"
    with SummaryWriter(str(run)) as writer:
        for step in range(3):
            writer.add_scalar("gradients/norm/net.0", 1.0, step)
            if extra == "add_scalars":
                writer.add_scalars("loss", {"train": 1.0, "val": 2.0}, step)
        if extra == "add_hparams":
            writer.add_hparams({"lr": 0.1}, {"hp/loss": 1.0})
    assert len({p.parent for p in run.rglob("events.out.tfevents.*")}) > 1
    rules = tmp_path / "t.toml"
    rules.write_text('[[rule]]\ntag = "gradients/norm/*"\nmax = 10.0\n')
    assert main(["check", str(tmp_path / "logs"), "--thresholds", str(rules)]) == 0
    assert "1 checks: 1 passed, 0 failed" in capsys.readouterr().out
    # a sibling run without the rule's tags still fails, as before
    with SummaryWriter(str(tmp_path / "logs" / "other")) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    assert main(["check", str(tmp_path / "logs"), "--thresholds", str(rules)]) == 2
    assert "searched run 'other'" in capsys.readouterr().err
