"""Reading scalars back from real TensorBoard event files."""

from __future__ import annotations

import math

import pytest
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.tensorboard.reader import LogDirError, find_runs, read_scalars


def _write(directory, scalars):
    writer = SummaryWriter(str(directory))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_reads_every_point_of_every_run(tmp_path):
    many = [(step, float(step)) for step in range(1500)]  # more than the default reservoir
    _write(tmp_path / "a" / "version_0", {"gradients/norm/fc": many, "health/x": [(3, math.nan)]})
    _write(tmp_path / "b", {"health/x": [(0, 1.0)]})
    (tmp_path / "empty").mkdir()
    runs = read_scalars(tmp_path)
    assert list(runs) == ["a/version_0", "b"]
    assert runs["a/version_0"]["gradients/norm/fc"] == many
    assert math.isnan(runs["a/version_0"]["health/x"][0][1])
    assert read_scalars(tmp_path / "b") == {".": {"health/x": [(0, 1.0)]}}
    assert find_runs(tmp_path) == [tmp_path / "a" / "version_0", tmp_path / "b"]


def test_bad_log_directories(tmp_path):
    with pytest.raises(LogDirError, match=r"log directory '.*missing' does not exist"):
        read_scalars(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LogDirError, match=r"file\.txt' is not a directory"):
        read_scalars(tmp_path / "file.txt")
    with pytest.raises(
        LogDirError, match=r"no TensorBoard event files \(events\.out\.tfevents\.\*\)"
    ):
        read_scalars(tmp_path)


def test_corrupt_event_file_is_named(tmp_path):
    _write(tmp_path / "good", {"health/x": [(0, 1.0)]})
    bad = tmp_path / "bad" / "events.out.tfevents.xxx"
    bad.parent.mkdir()
    bad.write_bytes(b"definitely not a tfrecord \x00\x01\x02" * 8)
    with pytest.raises(LogDirError, match=r"cannot read event file '.*events\.out\.tfevents\.xxx'"):
        read_scalars(tmp_path)


def test_run_without_scalars(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.add_text("note", "no scalars here")
    writer.close()
    with pytest.raises(LogDirError, match="hold no scalars"):
        read_scalars(tmp_path)
