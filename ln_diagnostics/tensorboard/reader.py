"""Read every scalar point of every run under a log directory.

A *run* is a directory that directly holds ``events.out.tfevents.*`` files; runs are found
recursively. Scalars are read with TensorBoard's own ``EventAccumulator`` and
``size_guidance={"scalars": 0}``: all points, because the default reservoir sampling keeps a
random subset and could hide the one step where a gradient exploded.

Example:
    >>> runs = read_scalars("lightning_logs")  # doctest: +SKIP
    >>> runs["my_model/version_0"]["health/grad_norm_total"][:2]  # doctest: +SKIP
    [(0, 1.93), (1, 1.87)]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

EVENT_FILE_GLOB = "events.out.tfevents.*"
ScalarSeries = list[tuple[int, float]]
RunScalars = dict[str, ScalarSeries]


class LogDirError(ValueError):
    """The log directory is missing, empty, or holds an event file that cannot be read."""


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """Directories under ``logdir`` (itself included) that hold event files, sorted.

    Raises:
        LogDirError: ``logdir`` is missing, not a directory, or holds no event file.
    """
    root = Path(logdir)
    if not root.exists():
        raise LogDirError(f"log directory '{root}' does not exist")
    if not root.is_dir():
        raise LogDirError(f"'{root}' is not a directory; expected a TensorBoard log directory")
    runs = sorted({path.parent for path in root.rglob(EVENT_FILE_GLOB) if path.is_file()})
    if not runs:
        raise LogDirError(
            f"no TensorBoard event files ({EVENT_FILE_GLOB}) under '{root}'; "
            "expected the directory a TensorBoardLogger or SummaryWriter wrote"
        )
    return runs


def _check_event_file(path: Path) -> None:
    """Raise when a file does not start with a valid TensorBoard event record.

    ``EventAccumulator`` silently skips unreadable records, so a corrupt or foreign file would
    otherwise look like a run that logged nothing.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    if path.stat().st_size == 0:
        return  # a writer that has not flushed yet: nothing to read, nothing wrong
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        first = next(iter(EventFileLoader(str(path)).Load()), None)
    except Exception as error:  # the loader surfaces I/O and decode errors of many kinds
        raise LogDirError(f"cannot read event file '{path}': {error}") from None
    finally:
        tb_logger.setLevel(level)
    if first is None or not first.file_version.startswith("brain.Event:"):
        raise LogDirError(
            f"cannot read event file '{path}': not a TensorBoard event file "
            "(no valid record at its start; the file is corrupt or was written by something else)"
        )


def read_run(run_dir: str | os.PathLike[str]) -> RunScalars:
    """All scalar points of one run directory as ``{tag: [(step, value), ...]}``.

    Raises:
        LogDirError: an event file in the directory is unreadable (the message names it).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = Path(run_dir)
    for path in sorted(directory.glob(EVENT_FILE_GLOB)):
        if path.is_file():
            _check_event_file(path)
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
        return {
            tag: [(int(event.step), float(event.value)) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]
        }
    except Exception as error:  # TensorBoard raises assorted errors on damaged files
        raise LogDirError(f"cannot read the event files in '{directory}': {error}") from None


def read_scalars(logdir: str | os.PathLike[str]) -> dict[str, RunScalars]:
    """Every scalar of every run under ``logdir``: ``{run_relpath: {tag: [(step, value)]}}``.

    ``run_relpath`` is the run directory relative to ``logdir`` in POSIX form (``"."`` when the
    event files sit directly in ``logdir``). Tags keep the order in which they were first
    written. Runs whose event files hold no scalars are left out.

    Raises:
        LogDirError: ``logdir`` is missing or empty, an event file is unreadable, or no run
            holds a scalar.
    """
    root = Path(logdir)
    runs: dict[str, RunScalars] = {}
    for run_dir in find_runs(root):
        scalars = read_run(run_dir)
        if scalars:
            runs[run_dir.relative_to(root).as_posix()] = scalars
    if not runs:
        raise LogDirError(f"the event files under '{root}' hold no scalars")
    return runs
