"""Read TensorBoard event files: every record's CRC checked, scalars streamed to whoever needs them.

A *run* is a directory that directly holds ``events.out.tfevents.*`` files; runs are found
recursively (symlinked directories are followed; a symlink that leads back into its own path is an
error, not an endless walk). An event file is a sequence of TFRecord frames: ``uint64`` length,
masked CRC32C of the length, the data (one serialized ``Event`` proto), masked CRC32C of the data.
Every frame's two CRCs are verified (C-accelerated ``google-crc32c``); a bad one is an error naming
the file and the byte offset, so damage in the middle of a file is never read past quietly.
TensorBoard's own reader stops silently at the first bad record, and keeps all points of a tag
in memory; this one hands each point to a sink as it is decoded and keeps nothing.

Anything that cannot be read (a directory or file without permission, a FIFO named like an event
file, a symlink loop, a corrupt record) raises :class:`LogDirError` naming it: a check that cannot
read all of its input must not answer.

Example:
    >>> runs = read_scalars("lightning_logs")  # doctest: +SKIP
    >>> runs["my_model/version_0"]["health/grad_norm_total"][:2]  # doctest: +SKIP
    [(0, 1.93), (1, 1.87)]
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event

from ln_diagnostics.tags import natural_key

EVENT_FILE_PREFIX = "events.out.tfevents."
EVENT_FILE_GLOB = EVENT_FILE_PREFIX + "*"
ScalarSeries = list[tuple[int, float]]
RunScalars = dict[str, ScalarSeries]
PointSink = Callable[[int, float], None]
SinkFor = Callable[[str], "PointSink | None"]

_HEADER = struct.Struct("<QI")  # length, masked CRC32C of the length
_FOOTER = struct.Struct("<I")  # masked CRC32C of the data
_CHUNK = 1 << 22  # bytes read at a time: memory stays flat whatever the file's size
_UNSEEN = object()  # a tag not yet met as a scalar


class LogDirError(ValueError):
    """A log directory or event file is missing, unreadable, corrupt or ambiguous."""


class CorruptRecordError(LogDirError):
    """A record of an event file fails its CRC check or does not decode.

    Attributes:
        path: the event file.
        offset: the byte offset of the bad record.
    """

    def __init__(self, message: str, path: Path, offset: int) -> None:
        super().__init__(message)
        self.path, self.offset = path, offset


class PartialRecordError(LogDirError):
    """An event file ends inside a record: a live run's writer mid-write, or a cut-short copy.

    Attributes:
        path: the event file.
        offset: the byte offset where the incomplete record starts.
    """

    def __init__(self, message: str, path: Path, offset: int) -> None:
        super().__init__(message)
        self.path, self.offset = path, offset


def _text(path: str | os.PathLike[str]) -> str:
    """A path as printable text (undecodable bytes shown as U+FFFD, never as ``b'...'``)."""
    return os.fsencode(path).decode("utf-8", "replace")


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """``data`` framed as one TFRecord, exactly as TensorBoard's writer frames it.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "records"
        >>> _ = path.write_bytes(frame(b"abc") + frame(b"de"))
        >>> list(EventFileRecords(path))
        [b'abc', b'de']
    """
    header = struct.pack("<Q", len(data))
    return b"".join(
        (header, _FOOTER.pack(_masked_crc(header)), data, _FOOTER.pack(_masked_crc(data)))
    )


def _why(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "a symlink loop (a link that points, directly or not, back to itself)"
    if error.errno == errno.ENOENT:
        return "a broken symlink (its target does not exist)"
    return error.strerror or str(error)


def _open_event_file(path: Path) -> BinaryIO:
    try:
        status = os.stat(path)
    except OSError as error:
        raise LogDirError(f"cannot read event file '{_text(path)}': {_why(error)}") from None
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise LogDirError(
            f"cannot read event file '{_text(path)}': it is {kind}; "
            "expected an event file written by TensorBoard"
        )
    try:
        return open(path, "rb", buffering=0)  # closed by the caller
    except OSError as error:
        raise LogDirError(f"cannot read event file '{_text(path)}': {_why(error)}") from None


class EventFileRecords:
    """The records of one event file, every frame's length and data CRC verified.

    Iterating yields each record's data (a serialized ``Event``). A bad CRC raises
    :class:`CorruptRecordError`; a file that ends inside a record raises
    :class:`PartialRecordError`, unless ``allow_partial``, in which case iteration stops there and
    :attr:`partial_at` holds the record's offset.

    Args:
        path: the event file.
        allow_partial: read up to an incomplete last record instead of failing on it.

    Example:
        >>> records = EventFileRecords("run/events.out.tfevents.1.host")  # doctest: +SKIP
        >>> sum(1 for _ in records)  # doctest: +SKIP
        2001
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_partial: bool = False) -> None:
        self.path = Path(path)
        self.allow_partial = allow_partial
        self.partial_at: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        with _open_event_file(self.path) as file:
            try:
                size = os.fstat(file.fileno()).st_size
                yield from self._frames(file, size)
            except OSError as error:
                raise LogDirError(
                    f"cannot read event file '{_text(self.path)}': {_why(error)}"
                ) from None

    def _frames(self, file: BinaryIO, size: int) -> Iterator[bytes]:
        buffer, pos, base = b"", 0, 0  # base: file offset of buffer[0]
        while True:
            if len(buffer) - pos < _HEADER.size:
                buffer, base, pos = buffer[pos:] + file.read(_CHUNK), base + pos, 0
                if not buffer:
                    return
                if len(buffer) < _HEADER.size:
                    self._partial(base, len(buffer), "its length header")
                    return
            length, length_crc = _HEADER.unpack_from(buffer, pos)
            if _masked_crc(buffer[pos : pos + 8]) != length_crc:
                self._corrupt(base + pos, "its length fails the CRC check")
            end = pos + _HEADER.size + length + _FOOTER.size
            if end > len(buffer):
                if base + end <= size:  # the rest of the record is in the file: read it
                    buffer = buffer[pos:] + file.read(max(end - len(buffer), _CHUNK))
                    base, end, pos = base + pos, end - pos, 0
                if end > len(buffer):
                    present = max(size, base + len(buffer)) - base - pos
                    self._partial(base + pos, present, f"its {length}-byte data")
                    return
            data = buffer[pos + _HEADER.size : end - _FOOTER.size]
            if _masked_crc(data) != _FOOTER.unpack_from(buffer, end - _FOOTER.size)[0]:
                self._corrupt(base + pos, "its data fails the CRC check")
            yield data
            pos = end

    def _corrupt(self, offset: int, why: str) -> NoReturn:
        if offset == 0:
            raise CorruptRecordError(
                f"cannot read event file '{_text(self.path)}': not a TensorBoard event file "
                f"(the record at byte 0: {why}); the file is corrupt or was written by "
                "something else",
                self.path,
                offset,
            )
        raise CorruptRecordError(
            f"event file '{_text(self.path)}' is corrupt: the record at byte {offset}: {why}; "
            "nothing after it can be trusted",
            self.path,
            offset,
        )

    def _partial(self, offset: int, present: int, what: str) -> None:
        if self.allow_partial:
            self.partial_at = offset
            return
        raise PartialRecordError(
            f"event file '{_text(self.path)}' ends inside the record at byte {offset} "
            f"({present} bytes present, {what} incomplete): its writer is still running or "
            "the file was cut short; pass --allow-partial to read the records before it",
            self.path,
            offset,
        )


def iter_events(path: str | os.PathLike[str], *, allow_partial: bool = False) -> Iterator[Event]:
    """The ``Event`` protos of one event file, in file order, every record CRC-checked.

    Raises:
        LogDirError: the file is unreadable, not an event file, corrupt, or (unless
            ``allow_partial``) ends inside a record; the message names the file and offset.

    Example:
        >>> [e.step for e in iter_events("run/events.out.tfevents.1.host")][:3]  # doctest: +SKIP
        [0, 0, 1]
    """
    return _events(EventFileRecords(path, allow_partial=allow_partial))


def _events(records: EventFileRecords) -> Iterator[Event]:
    offset = 0
    for data in records:
        try:
            event = Event.FromString(data)
        except Exception:  # protobuf's DecodeError, whichever backend raises it
            records._corrupt(offset, "its CRC is right but it is not an Event proto")
        if offset == 0 and not event.file_version.startswith("brain.Event:"):
            records._corrupt(0, "it is not TensorBoard's file_version record")
        yield event
        offset += _HEADER.size + len(data) + _FOOTER.size


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``logdir`` (itself included) that hold event files, sorted.

    Raises:
        LogDirError: ``logdir`` is missing or not a directory, holds no event file, or has a
            directory that cannot be listed, an event-file name that is not a readable regular
            file, or a symlink loop (each named in the message).
    """
    root = Path(logdir)
    try:
        status = os.stat(root)
    except OSError as error:
        if error.errno == errno.ENOENT and not os.path.islink(root):
            raise LogDirError(f"log directory '{_text(root)}' does not exist") from None
        raise LogDirError(f"cannot read log directory '{_text(root)}': {_why(error)}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise LogDirError(
            f"'{_text(root)}' is not a directory; expected a TensorBoard log directory"
        )
    runs: list[Path] = []
    _walk(root, ((status.st_dev, status.st_ino),), runs)
    if not runs:
        raise LogDirError(
            f"no TensorBoard event files ({EVENT_FILE_GLOB}) under '{_text(root)}'; "
            "expected the directory a TensorBoardLogger or SummaryWriter wrote"
        )
    return sorted(runs)


def _walk(directory: Path, ancestors: tuple[tuple[int, int], ...], runs: list[Path]) -> None:
    try:
        with os.scandir(directory) as entries:
            listed = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        raise LogDirError(f"cannot read directory '{_text(directory)}': {_why(error)}") from None
    holds_events = False
    for entry in listed:
        path = directory / entry.name
        if entry.name.startswith(EVENT_FILE_PREFIX):
            _open_event_file(path).close()  # readable, regular: or an error naming it
            holds_events = True
            continue
        try:
            status = os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LogDirError(f"'{_text(path)}' is {_why(error)}") from None
            continue  # a dangling link that is not an event file: nothing of TensorBoard's
        if not stat.S_ISDIR(status.st_mode):
            continue
        key = (status.st_dev, status.st_ino)
        if key in ancestors:
            raise LogDirError(
                f"'{_text(path)}' is a symlink loop: it leads back to "
                f"'{_text(os.path.realpath(path))}', a directory it is inside of"
            )
        _walk(path, (*ancestors, key), runs)
    if holds_events:
        runs.append(directory)


def event_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The event files directly in ``run_dir`` in creation order.

    TensorBoard names them ``events.out.tfevents.{seconds}.{host}.{pid}.{counter}``; sorting the
    numbers as numbers keeps two files of one second in the order their counter gives.
    """
    directory = Path(run_dir)
    try:
        names = sorted(
            (name for name in os.listdir(directory) if name.startswith(EVENT_FILE_PREFIX)),
            key=natural_key,
        )
    except OSError as error:
        raise LogDirError(f"cannot read directory '{_text(directory)}': {_why(error)}") from None
    return [directory / name for name in names]


@dataclass
class RunScan:
    """What :func:`scan_run` saw of one run.

    Attributes:
        path: the run directory.
        files: its event files, in the order read.
        tags: every scalar tag met, in first-written order.
        partial: ``(file, offset)`` of each incomplete last record read up to (``allow_partial``).
    """

    path: Path
    files: list[Path]
    tags: dict[str, None] = field(default_factory=dict)
    partial: list[tuple[Path, int]] = field(default_factory=list)


@dataclass
class _FileSpan:
    path: Path
    steps: dict[str, tuple[int, int]]  # tag read -> lowest and highest step of its points


def scan_run(
    run_dir: str | os.PathLike[str],
    sink_for: SinkFor,
    *,
    allow_partial: bool = False,
    merge: bool = False,
) -> RunScan:
    """Stream every scalar point of one run into the sinks that want it.

    ``sink_for(tag)`` is called once per scalar tag, on its first point, and returns the function
    that receives the tag's ``(step, value)`` points in file order, or ``None`` to drop them.
    Files are read in name order. Several files that log one tag at overlapping steps are two runs
    written into one directory: an error, unless ``merge`` (a run resumed into its own directory:
    the files are then read as one series, in file order).

    Raises:
        LogDirError: a file is unreadable or corrupt, or files overlap without ``merge``.

    Example:
        >>> series = {}
        >>> sink = lambda tag: lambda step, value: series.setdefault(tag, []).append((step, value))
        >>> scan_run("lightning_logs/version_0", sink).tags  # doctest: +SKIP
        {'health/grad_norm_total': None, ...}
    """
    scan = RunScan(Path(run_dir), event_files(run_dir))
    sinks: dict[str, PointSink | None] = {}
    spans = []
    for path in scan.files:
        # tag -> None (dropped), _UNSEEN, or [sink, lowest step, highest step] in this file
        file_sinks: dict[str, list[Any] | object | None] = {}
        records = EventFileRecords(path, allow_partial=allow_partial)
        for event in _events(records):
            values = event.summary.value
            if not values:
                continue
            step = event.step
            for value in values:
                # The hot loop (one pass per point): the value's kind is asked only when its
                # simple_value reads 0.0, the default every non-scalar value reads as.
                tag = value.tag
                try:
                    entry = file_sinks[tag]
                except KeyError:
                    entry = file_sinks[tag] = _entry(sinks.get(tag, _UNSEEN))
                if entry is None:
                    continue
                number = value.simple_value
                if entry is _UNSEEN or number == 0.0:
                    if value.WhichOneof("value") != "simple_value":
                        continue
                    if entry is _UNSEEN:
                        sink = sinks[tag] = sink_for(tag)
                        scan.tags[tag] = None
                        entry = file_sinks[tag] = _entry(sink)
                        if entry is None:
                            continue
                entry[0](step, number)  # type: ignore[index]
                if step < entry[1]:  # type: ignore[index]
                    entry[1] = step  # type: ignore[index]
                if step > entry[2]:  # type: ignore[index]
                    entry[2] = step  # type: ignore[index]
        steps = {
            tag: (entry[1], entry[2])
            for tag, entry in file_sinks.items()
            if isinstance(entry, list) and entry[1] <= entry[2]
        }
        spans.append(_FileSpan(path, steps))
        if records.partial_at is not None:
            scan.partial.append((path, records.partial_at))
    if not merge:
        _refuse_overlap(scan.path, spans)
    return scan


def _entry(sink: PointSink | object | None) -> list[Any] | object | None:
    """A file's bookkeeping for one tag: the sink and the tag's step range, empty so far."""
    return [sink, math.inf, -math.inf] if callable(sink) else sink


def _refuse_overlap(run_dir: Path, spans: list[_FileSpan]) -> None:
    """Raise when two files of one directory log one tag at overlapping steps.

    Each tag is compared on its own steps, so a resume whose series continue each other is one
    run whatever else the files log. A tag that both files log at one and the same single step
    (Lightning writes its ``hp_metric`` placeholder at step 0 on every fit) is no overlap.
    """
    for index, early in enumerate(spans):
        for late in spans[index + 1 :]:
            for tag in sorted(early.steps.keys() & late.steps.keys()):
                (a_first, a_last), (b_first, b_last) = early.steps[tag], late.steps[tag]
                if b_first > a_last or a_first > b_last:
                    continue
                if a_first == a_last == b_first == b_last:
                    continue
                raise LogDirError(
                    f"'{_text(run_dir)}' holds event files whose steps overlap: "
                    f"'{early.path.name}' (steps {a_first}-{a_last}) and "
                    f"'{late.path.name}' (steps {b_first}-{b_last}) both log '{tag}': "
                    "two runs written into one directory? Give each run its own directory, or "
                    "pass --merge if the later file resumes the earlier one (they are then read "
                    "as one series, in file order)"
                )


def read_run(
    run_dir: str | os.PathLike[str], *, allow_partial: bool = False, merge: bool = False
) -> RunScalars:
    """All scalar points of one run directory as ``{tag: [(step, value), ...]}``, in file order.

    Keeps every point in memory: for big logs prefer :func:`scan_run` with a folding sink.

    Raises:
        LogDirError: an event file is unreadable, corrupt or overlaps another (see
            :func:`scan_run`); the message names it.
    """
    series: RunScalars = {}

    def sink_for(tag: str) -> PointSink:
        points = series[tag] = []
        return lambda step, value: points.append((step, value))

    scan_run(run_dir, sink_for, allow_partial=allow_partial, merge=merge)
    return series


def run_name(logdir: str | os.PathLike[str], run_dir: Path) -> str:
    """A run's name: its directory relative to ``logdir`` in POSIX form (``"."`` for ``logdir``)."""
    return run_dir.relative_to(Path(logdir)).as_posix()


def read_scalars(
    logdir: str | os.PathLike[str], *, allow_partial: bool = False, merge: bool = False
) -> dict[str, RunScalars]:
    """Every scalar of every run under ``logdir``: ``{run_name: {tag: [(step, value)]}}``.

    Tags keep the order in which they were first written. Runs whose event files hold no
    scalars are left out.

    Raises:
        LogDirError: ``logdir`` is missing or empty, an event file is unreadable or corrupt,
            or no run holds a scalar.
    """
    runs: dict[str, RunScalars] = {}
    for run_dir in find_runs(logdir):
        scalars = read_run(run_dir, allow_partial=allow_partial, merge=merge)
        if scalars:
            runs[run_name(logdir, run_dir)] = scalars
    if not runs:
        raise LogDirError(f"the event files under '{_text(logdir)}' hold no scalars")
    return runs
