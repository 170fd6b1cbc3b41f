"""Reading scalars back from real TensorBoard event files."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics.tensorboard.reader import (
    CorruptRecordError,
    EventFileRecords,
    LogDirError,
    PartialRecordError,
    find_runs,
    frame,
    iter_events,
    read_run,
    read_scalars,
    scan_run,
)


def test_reads_every_point_of_every_run(tmp_path, write_run):
    many = [(step, float(step)) for step in range(1500)]  # more than the default reservoir
    write_run(
        tmp_path / "a" / "version_0", {"gradients/norm/fc": many, "health/x": [(3, math.nan)]}
    )
    write_run(tmp_path / "b", {"health/x": [(0, 1.0)]})
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


def test_corrupt_event_file_is_named(tmp_path, write_run):
    write_run(tmp_path / "good", {"health/x": [(0, 1.0)]})
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


def test_a_real_training_run_reads_back_exactly_as_tensorboard_reads_it(make_trainer, events):
    """Every scalar point of a default LayerDiagnostics run equals EventAccumulator's."""
    from pytorch_lightning.demos.boring_classes import DemoModel, RandomDataset
    from torch.utils.data import DataLoader

    from ln_diagnostics.callbacks import LayerDiagnostics

    trainer = make_trainer([LayerDiagnostics()], max_steps=12, log_every_n_steps=1)
    trainer.fit(DemoModel(), DataLoader(RandomDataset(32, 64), batch_size=4))
    run_dir = Path(trainer.logger.log_dir)
    ours = read_run(run_dir)
    accumulator = events(run_dir)
    theirs = {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
    assert any(tag.startswith("gradients/norm/") for tag in ours)
    assert ours.keys() == theirs.keys()
    for tag, points in theirs.items():  # float32 on disk: both read the same 32-bit value
        assert [s for s, _ in ours[tag]] == [s for s, _ in points], tag
        assert [v for _, v in ours[tag]] == [v for _, v in points], tag


def _records_of(path: Path) -> list[tuple[int, int]]:
    data, found, pos = path.read_bytes(), [], 0
    while pos < len(data):
        length = struct.unpack_from("<Q", data, pos)[0]
        found.append((pos, length))
        pos += 16 + length
    return found


def test_records_round_trip_through_tensorboards_own_loader(tmp_path, write_run):
    """``frame`` writes what TensorBoard reads; ``iter_events`` reads what TensorBoard writes."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    write_run(tmp_path / "tb", {"health/x": [(s, s / 3) for s in range(50)]})
    (written,) = (tmp_path / "tb").glob("events.*")
    ours = [event.SerializeToString() for event in iter_events(written)]
    assert ours == list(RawEventFileLoader(str(written)).Load())

    framed = tmp_path / "framed" / "events.out.tfevents.1.host"
    framed.parent.mkdir()
    framed.write_bytes(b"".join(frame(record) for record in ours))
    assert list(RawEventFileLoader(str(framed)).Load()) == ours
    assert read_run(framed.parent) == {
        "health/x": [(s, float(np.float32(s / 3))) for s in range(50)]
    }


def test_every_record_is_checked_and_offsets_are_exact(tmp_path, write_run):
    write_run(tmp_path, {"health/x": [(s, 1.0) for s in range(30)]})
    (path,) = tmp_path.glob("events.*")
    records = _records_of(path)
    clean = path.read_bytes()
    for index in (1, 15, len(records) - 1):  # first scalar, middle, last record
        offset, length = records[index]
        damaged = bytearray(clean)
        damaged[offset + 12 + length // 2] ^= 1
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptRecordError, match=f"the record at byte {offset}: its data") as e:
            list(EventFileRecords(path))
        assert (e.value.path, e.value.offset) == (path, offset)
    path.write_bytes(clean[: records[-1][0] + 3])
    reader = EventFileRecords(path)
    with pytest.raises(
        PartialRecordError, match=f"ends inside the record at byte {records[-1][0]}"
    ):
        list(reader)
    reader = EventFileRecords(path, allow_partial=True)
    assert len(list(reader)) == len(records) - 1
    assert reader.partial_at == records[-1][0]


def test_a_foreign_record_that_passes_its_crc_is_not_an_event(tmp_path):
    path = tmp_path / "events.out.tfevents.1.host"
    path.write_bytes(frame(b"\xff\xff\xff\xff"))
    with pytest.raises(CorruptRecordError, match="not a TensorBoard event file"):
        list(iter_events(path))


def test_scan_run_streams_only_the_wanted_tags(tmp_path, write_run):
    write_run(tmp_path, {"a/x": [(0, 1.0), (1, 2.0)], "b/y": [(0, 5.0)], "a/z": [(3, 0.0)]})
    asked, got = [], []

    def sink_for(tag):
        asked.append(tag)
        return (
            (lambda step, value: got.append((tag, step, value))) if tag.startswith("a/") else None
        )

    scan = scan_run(tmp_path, sink_for)
    assert asked == ["a/x", "b/y", "a/z"] == list(scan.tags)
    assert got == [("a/x", 0, 1.0), ("a/x", 1, 2.0), ("a/z", 3, 0.0)]


def test_non_scalar_values_never_reach_a_sink(tmp_path):
    """A histogram reads 0.0 as simple_value: it must not become a scalar point of 0."""
    writer = SummaryWriter(str(tmp_path))
    writer.add_histogram("a/h", np.arange(10.0), 0)
    writer.add_scalar("a/s", 0.0, 0)
    writer.add_text("a/t", "note", 0)
    writer.close()
    assert read_run(tmp_path) == {"a/s": [(0, 0.0)]}
